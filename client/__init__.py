"""Quiver's thin client: push, pull, search and route against a hub; load PEFT adapters, merge them into
local torch models (restored bitwise) or route among them token by token (Arrow).

This folder is the `quiver_hub` package; the hub's server (`quiver_hub.hub`), the registry
(`quiver_hub.registry`) and the migrations are its subpackages (docs/architecture.md, "The layers").
The names below load on first use, as huggingface_hub's do: `import quiver_hub.registry.lora.algebra` (the server
does) pulls neither httpx nor the merge code, and `import quiver_hub` alone pulls nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module of quiver_hub that defines it
_EXPORTS = {
    "Adapter": "adapter",
    "apply_arrow": "arrow",
    "remove_arrow": "arrow",
    "Hub": "api",
    "reference_means": "capture",
    "compose": "composition",
    "Composition": "composition",
    "merge": "merging",
    "merged": "merging",
    "unmerge": "merging",
    **dict.fromkeys(
        ["BadRequest", "Conflict", "Forbidden", "HubError", "InvalidAdapter", "NotFound", "TooLarge", "Unauthorized"],
        "errors",
    ),
}
__all__ = [
    "Adapter",
    "Composition",
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
    "compose",
    "merge",
    "merged",
    "reference_means",
    "remove_arrow",
    "unmerge",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'quiver_hub' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and editors see
    from quiver_hub.adapter import Adapter
    from quiver_hub.api import Hub
    from quiver_hub.arrow import apply_arrow, remove_arrow
    from quiver_hub.capture import reference_means
    from quiver_hub.composition import Composition, compose
    from quiver_hub.errors import (
        BadRequest,
        Conflict,
        Forbidden,
        HubError,
        InvalidAdapter,
        NotFound,
        TooLarge,
        Unauthorized,
    )
    from quiver_hub.merging import merge, merged, unmerge
