"""Quiver's thin client: push, pull, search and route against a hub; load PEFT adapters, merge them into
local torch models (restored bitwise) or route among them token by token (Arrow).

Imports only torch, safetensors, numpy, httpx and registry.lora (no server dependencies).
"""

from client.adapter import Adapter
from client.arrow import apply_arrow, remove_arrow
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
    "apply_arrow",
    "merge",
    "merged",
    "remove_arrow",
    "unmerge",
]
