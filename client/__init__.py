"""Quiver's thin client: load PEFT adapters and merge them into local torch models.

Imports only torch, safetensors, numpy and registry.lora (no server dependencies). Still to come
(issue 5): Hub (push, pull, search, route), the local cache, and Arrow routing on torch models.
"""

from client.adapter import Adapter
from client.merge import merge, merged, unmerge

__all__ = ["Adapter", "merge", "merged", "unmerge"]
