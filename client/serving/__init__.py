"""Serving engines and fronts: the vLLM LoRA resolver plugin and the OpenAI-compatible routing gateway."""
