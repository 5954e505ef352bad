"""Quiver's thin client: load PEFT adapters and merge them into local torch models.

Imports only torch, safetensors, numpy, httpx and registry.lora (no server dependencies). Still to
come (issue 5): Arrow routing on torch models (apply_arrow, remove_arrow) and the client CLI.
"""

from client.adapter import Adapter
from client.errors import BadRequest, Conflict, Forbidden, HubError, InvalidAdapter, NotFound, TooLarge, Unauthorized
from client.hub import Hub
from client.merge import merge, merged, unmerge

__all__ = [
    "Adapter",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "Hub",
    "HubError",
    "InvalidAdapter",
    "NotFound",
    "TooLarge",
    "Unauthorized",
    "merge",
    "merged",
    "unmerge",
]
