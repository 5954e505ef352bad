"""Helpers shared by the benchmarks: the device (`--device cuda`), timing and table printing."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch

DEVICE = torch.device(sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu")


def sync() -> None:
    """Wait for DEVICE's queued work (a GPU runs asynchronously)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn: Callable[[], object]) -> float:
    """Seconds of one fn(), its work on DEVICE included."""
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def times(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> list[float]:
    """Wall times of fn() in seconds over `repeat` runs, after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    return [timed(fn) for _ in range(repeat)]


def median_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds over `repeat` runs, after `warmup` untimed runs."""
    return statistics.median(times(fn, repeat, warmup))


def best_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Shortest wall time of fn() over `repeat` runs: for a bound, what the hardware was seen to do."""
    return min(times(fn, repeat, warmup))


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])
