"""Handing memory the hub freed back to the operating system.

A publish reads a whole adapter and works on float64 copies of its factors (hundreds of MB for a
Llama-7B-shaped one); a rebuild of the indexes reads every prototype through rows and stacks. Freed, such
pages stayed in glibc's heaps: its threshold for giving a large block its own mapping rises to the
largest block freed (up to 32 MiB), so later blocks below it land in the heaps and fragment them. A hub
grew by several times an adapter's index bytes per publish (bench/README.md, "Resident memory"). Two
remedies, both glibc's own (elsewhere they do nothing):
- `quiver serve` fixes that threshold at MMAP_THRESHOLD: a block that large is mapped on its own and
  unmapped when freed;
- after a publish, a rebuild or a large route, malloc_trim returns the heaps' free pages (not a garbage collection:
  over the objects of torch and the embedder it takes longer than the rest of a publish's bookkeeping).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any

M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h); setting it also stops the threshold's rise
MMAP_THRESHOLD = 1 << 20  # blocks of 1 MiB and more: a route's products at 10,000 adapters, every tensor of a publish


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def map_large_blocks() -> None:
    """Give every block of MMAP_THRESHOLD bytes or more its own mapping, returned when it is freed (for
    the whole process: `quiver serve` calls it at start)."""
    if (libc := _libc()) is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release_freed_memory() -> None:
    """Return the heaps' free pages to the operating system."""
    if (libc := _libc()) is not None:
        libc.malloc_trim(0)
