"""Where the client keeps things on this machine: the cache root (QUIVER_CACHE, default ~/.cache/quiver),
shared by the download cache, the reference means and the compiled merge kernel."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("QUIVER_CACHE") or Path.home() / ".cache" / "quiver")
