"""Quiver's domain: models, publishing, the blob store, validation and the LoRA algebra.

Kept light on purpose: `import registry.lora.algebra` must not pull SQLAlchemy or FastAPI,
so the thin client can use the algebra without the service's dependencies.
"""
