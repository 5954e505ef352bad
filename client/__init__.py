"""Quiver's thin client: push, pull, search and route against a hub; load PEFT adapters, merge them into
local torch models (restored bitwise) or route among them token by token (Arrow).

This folder is the `quiver_hub` package; the hub's server (`quiver_hub.hub`), the registry
(`quiver_hub.registry`) and the migrations are its subpackages (docs/architecture.md, "The layers").
The names below load on first use, as huggingface_hub's do: `import quiver_hub.registry.lora.algebra` (the
server does) pulls neither httpx nor the merge code, and `import quiver_hub` alone pulls nothing heavy.

Inside: the HTTP client (`api`, `cache`, `credentials`, `results`, `retries`, `routing`, `upload_files`),
what every layer shares (`errors`, `paths`), the model work (`local/`), `workflows` (`Hub`: both together),
the `quiver` command (`cli/`) and serving engines (`serving/`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module of quiver_hub that defines it
_EXPORTS = {
    "Adapter": "local.adapter",
    "apply_arrow": "local.arrow",
    "remove_arrow": "local.arrow",
    "Hub": "workflows",
    "reference_means": "local.capture",
    "compose": "local.composition",
    "Composition": "local.composition",
    "merge": "local.merging",
    "merged": "local.merging",
    "unmerge": "local.merging",
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


# The modules that moved when the HTTP client and the model work came apart (deprecated old names).
_MOVED = {
    **{m: f"local.{m}" for m in ("adapter", "arrow", "capture", "composition", "fused", "merging")},
    **{m: f"serving.{m}" for m in ("gateway", "vllm_resolver")},
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import quiver_hub.merging` (and the others in _MOVED) gives the module at its new place, with a
    DeprecationWarning that names it."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        package, _, old = fullname.rpartition(".")
        return importlib.util.spec_from_loader(fullname, self) if package == __name__ and old in _MOVED else None

    def create_module(self, spec: Any) -> Any:
        new = f"{__name__}.{_MOVED[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} is deprecated: import {new}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: Any) -> None:
        pass


sys.meta_path.append(_MovedModules())


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and editors see
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
    from quiver_hub.local.adapter import Adapter
    from quiver_hub.local.arrow import apply_arrow, remove_arrow
    from quiver_hub.local.capture import reference_means
    from quiver_hub.local.composition import Composition, compose
    from quiver_hub.local.merging import merge, merged, unmerge
    from quiver_hub.workflows import Hub
