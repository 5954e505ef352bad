"""Rows: a float32 matrix that moves from memory to a mapped, unlinked file past its spill size, keeps
every row through growth, and lets go of the mapping's pages so that the process does not hold them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from quiver_hub.registry.search.row_store import Rows, Spill


def rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


def open_in(folder: Path) -> list[str]:
    """The files this process holds open in `folder` (unlinked ones read '... (deleted)')."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the listing's own descriptor, closed since
            pass
    return [link for link in links if link.startswith(str(folder))]


def test_rows_stay_in_memory_below_the_spill_size_and_move_to_a_file_past_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = Rows(64, Spill(tmp_path / "indexes", at_bytes=64 * 4 * 100))
    values = rng.standard_normal((300, 64)).astype(np.float32)
    rows.reserve(50, 0)
    rows.array[:50] = values[:50]
    assert not rows.in_file and not open_in(tmp_path)
    for capacity, filled in [(120, 50), (200, 50), (300, 50)]:  # past 100 rows: into the file, then it grows
        rows.reserve(capacity, filled)
        assert (rows.array[:50] == values[:50]).all() and (rows.array[50:capacity] == 0).all()
    assert rows.in_file and open_in(tmp_path / "indexes") and all(x.endswith("(deleted)") for x in open_in(tmp_path))
    rows.array[50:300] = values[50:]
    rows.release()
    assert (rows.array == values).all()  # read back from the file after the pages were let go
    copy = rows.copy(250)
    assert (copy == values[:250]).all() and not copy.flags.writeable
    rows.array[0] = 7  # the copy is its own
    assert (copy[0] == values[0]).all()
    assert Rows(8, Spill(tmp_path, 0)).copy(0).shape == (0, 8)


def test_released_rows_are_not_the_process_s_resident_memory(tmp_path: Path) -> None:
    rows = Rows(1024, Spill(tmp_path, at_bytes=0))
    rows.reserve(16_384, 0)  # 64 MiB
    rows.array[:] = 1.0
    before = rss_file_kib()
    rows.release()
    assert before - rss_file_kib() > 48 * 1024  # the pages written are the page cache's, not this process's
    assert float(rows.array[:, 5].sum()) == 16_384.0
    rows.release()
