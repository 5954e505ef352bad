"""Where a prototype index keeps its float32 rows: in memory while they are few, in a file once many.

A route reads every int8 code of the modules it names but only a few float32 rows: the candidates its
error bound could not rule out (PrototypeIndex). So the codes stay in memory and a large index's float32
rows live in a file of their own, mapped into the process: the page cache holds them while there is
memory to spare and the kernel takes them back when there is not, instead of the hub's own heap holding
4 bytes a value for good. After each pass over them the mapping's pages are let go (MADV_DONTNEED: the
file and its cached pages stay, this process stops counting them as its own), so the hub's resident
memory is its codes, not its rows (bench/README.md, "Resident memory, read from the process").

The file is unlinked from the start (tempfile.TemporaryFile), so nothing is left behind by a crash: the
rows are derived state, rebuilt from the snapshot or the database at the next start. It lives in
QUIVER_HOME/indexes, on the hub's disk: a /tmp on tmpfs would be memory again.
"""

from __future__ import annotations

import logging
import mmap
import os
import sys
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

log = logging.getLogger("quiver.indexes")
# An index made without a Spill keeps its rows in memory: the hub says where and from what size
# (QUIVER_INDEX_SPILL_BYTES, hub/settings.py; its default is 8 MiB, 512 rows of 4096).
SPILL_BYTES = sys.maxsize


@dataclass(frozen=True)
class Spill:
    """Where large indexes keep their rows (None: the system's temporary folder) and from what size (an
    index's float32 rows, bytes; 0: every index with a row)."""

    folder: Path | None = None
    at_bytes: int = field(default_factory=lambda: SPILL_BYTES)


class Rows:
    """A float32 matrix of `width` columns that grows by whole capacities: `array` is every row of the
    capacity (the caller knows how many it has filled). In memory below the spill size, then in a file."""

    def __init__(self, width: int, spill: Spill | None = None):
        self.width = width
        self.spill = spill or Spill()
        self.array = np.zeros((0, width), dtype=np.float32)
        self._file: IO[bytes] | None = None
        self._map: mmap.mmap | None = None

    @property
    def in_file(self) -> bool:
        return self._file is not None

    def _in_memory(self, size: int) -> bool:
        """Whether rows of `size` bytes stay in memory (below the spill size, and none in a file yet)."""
        return self._file is None and size < max(self.spill.at_bytes, 1)

    def adopt(self, vectors: np.ndarray) -> bool:
        """Take `vectors` as the rows without copying them, where they stay in memory (float32, C-contiguous,
        writeable, below the spill size): what a snapshot loads is a few GB at 10,000 7B-shaped adapters.
        False: they must be added as any rows are."""
        usable = vectors.dtype == np.float32 and vectors.flags.c_contiguous and vectors.flags.writeable
        if not (usable and vectors.shape[1:] == (self.width,) and self._in_memory(vectors.nbytes)):
            return False
        self.array = vectors
        return True

    def reserve(self, capacity: int, filled: int) -> None:
        """Room for `capacity` rows, keeping the first `filled`."""
        size = capacity * self.width * 4
        if self._in_memory(size) or (self._file is None and not self._open_file()):
            grown = np.zeros((capacity, self.width), dtype=np.float32)
            grown[:filled] = self.array[:filled]
            self.array = grown
            return
        assert self._file is not None
        # the first time past the spill size the rows so far move to the file; after, it grows in place
        # (its new rows read as zeros) and only the mapping is made again
        held = self.array[:filled] if self._map is None else None
        self._file.truncate(size)
        self._map_file(capacity)
        if held is not None:
            self.array[:filled] = held
        self.release()

    def _open_file(self) -> bool:
        """Make the file; False (the rows stay in memory, and a warning says why) where the folder cannot
        hold one."""
        try:
            if self.spill.folder is not None:
                self.spill.folder.mkdir(parents=True, exist_ok=True)
            self._file = tempfile.TemporaryFile(dir=self.spill.folder)  # noqa: SIM115 (open for the index's life)
            weakref.finalize(self, self._file.close)  # closed with the index (the mapping keeps its own copy)
            return True
        except OSError as e:
            log.warning("search indexes: float32 prototypes kept in memory, no file in %s: %s", self.spill.folder, e)
            self.spill = Spill(self.spill.folder, at_bytes=sys.maxsize)
            return False

    def _map_file(self, capacity: int) -> None:
        """Map the file's `capacity` rows (an older mapping lives on while a view of it does)."""
        assert self._file is not None
        self._map = mmap.mmap(self._file.fileno(), capacity * self.width * 4)
        self.array = np.frombuffer(self._map, dtype=np.float32).reshape(capacity, self.width)

    def release(self) -> None:
        """Let go of the mapping's pages (a file-backed index; nothing otherwise): the rows stay in the file
        and in the page cache, and are read back from there on the next touch."""
        if self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)

    def copy(self, rows: int) -> np.ndarray:
        """The first `rows` rows as an array of their own: in memory for an in-memory index; for a
        file-backed one, a mapping of a copy made in the kernel (os.copy_file_range), so that a snapshot of
        a large library never holds its rows in the heap."""
        if self._file is None or rows == 0:
            return self.array[:rows].copy()
        size = rows * self.width * 4
        out = tempfile.TemporaryFile(dir=self.spill.folder)  # noqa: SIM115 (closed with the mapping)
        out.truncate(size)
        done = 0
        while done < size:
            done += os.copy_file_range(self._file.fileno(), out.fileno(), size - done, done, done)
        mapped = mmap.mmap(out.fileno(), size, access=mmap.ACCESS_READ)
        out.close()  # the mapping holds the file (mmap keeps its own descriptor)
        return np.frombuffer(mapped, dtype=np.float32).reshape(rows, self.width)
