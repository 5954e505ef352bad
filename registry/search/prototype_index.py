"""The prototype index: exact top-k of |<h, v>| over one module's prototypes, found through int8 codes.

A route request reads every prototype of every module it names, once per request: at 10,000
Llama-7B-shaped adapters that is 1.3 GB of float32 for 8 modules, and the request's time is the time
to stream it from memory. This index keeps, beside each float32 prototype v, an int8 code c with a
scale s (v ~ s c, one scale per prototype) and the norms ||v|| and r = ||v - s c||, and answers in
three steps, each exact where it must be:

1. approximate |<h, v>| for every prototype from the codes: h is written as two int8 levels
   (h ~ s1 q1 + s2 q2, the second quantising what the first left; codes of at most NARROW values take
   one level, h ~ s1 q1), and one int8 x int8 -> int32 product (exact integers) gives <h^, s c> for the
   levels at a quarter of float32's bytes;
2. bound the error: <h, v> - <h^, s c> = <h^, v - s c> + <h - h^, v>, so by Cauchy-Schwarz it is at
   most ||h^|| r + ||h - h^|| ||v|| (plus a slack for float32 rounding);
3. score exactly, in float32 against the stored prototypes, every candidate whose upper bound reaches
   the k-th best exact score among each token's k best approximate ones: no prototype left out can be
   in the top k.

The answer is the same top k, with the same float32 scores, that a dense product over every prototype
gives; only the time depends on the data (random unit prototypes of 4096 values: about 300 of 10,000
are scored in float32 for a request of 16 tokens). Where the bound keeps most rows, one dense product
scores them all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from quiver_hub.registry.search.row_store import Rows, Spill

SLACK = 1e-5  # of ||h|| ||v||: float32 rounding in the scales, norms and sums, with a wide margin
# Codes up to this wide are multiplied as the transposed operand, against one int8 level of h (h_levels,
# int8_products)
NARROW = 1024
# Codes are padded with zeros to a multiple of this width: torch 2.13's int8 product on the CPU returns
# wrong sums for rows of one value (tests/unit/test_prototype_index.py covers widths 1 and 7).
CODE_ALIGN = 8
# Tokens x prototypes scored at once: a request of 8,192 tokens against 100,000 prototypes would
# otherwise hold several GB of products; above this, its tokens are scored in blocks (~400 MB at most).
BLOCK = 16_000_000


def quantise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and one scale per row, x ~ scale * codes (rows of zeros get scale 1)."""
    scale = np.abs(x).max(axis=1) / 127
    scale[scale == 0] = 1
    return np.rint(x / scale[:, None]).astype(np.int8), scale.astype(np.float32)


def h_levels(h: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(levels, s1, s2, h^) of hidden states h (t x dim) against codes `width` wide: two int8 levels
    h ~ s1 q1 + s2 q2 (the second quantising what the first left; levels 2t x width, zero-padded) for wide
    codes, one (t x width, s2 empty) for codes of at most NARROW values. The product is the request's time
    (compute-bound at 32 columns) and a second level doubles it, while the bound it tightens matters less
    the narrower the codes (the error against the spread of scores grows as sqrt(width)). Measured (ms a
    module, one thread, 16 tokens): 4,096 wide, 10,000 rows: 14.1 two levels, 19.2 one; 1,024 wide, 100,000
    rows: 39.1 and 26.0; 512 wide, 1,000,000 rows on two threads: 192 and 98."""
    t, dim = h.shape
    q1, s1 = quantise(h)
    if width <= NARROW:
        levels = np.zeros((t, width), dtype=np.int8)
        levels[:, :dim] = q1
        return levels, s1, np.zeros(0, dtype=np.float32), s1[:, None] * q1
    q2, s2 = quantise(h - s1[:, None] * q1)
    levels = np.zeros((2 * t, width), dtype=np.int8)
    levels[:t, :dim], levels[t:, :dim] = q1, q2
    return levels, s1, s2, s1[:, None] * q1 + s2[:, None] * q2


def int8_products(code: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """levels x codes^T, exact int32 (a transposed view for wide codes), its operands in the order oneDNN is
    fastest at for the width: wide codes as the row-major operand, streamed in their own layout (levels x
    codes^T read them transposed: 20.0 against 10.2 ms at 10,000 x 4096, 16 tokens); narrow ones as
    codes^T, whose products need no transpose after (at 500,000 x 512 that transpose alone took as long as
    the product: 155 against 251 ms for both)."""
    if code.shape[1] > NARROW:
        return torch._int_mm(code, levels.T).T
    return torch._int_mm(levels, code.T)


def row_ranges(n: int, threads: int) -> list[tuple[int, int]]:
    """The ranges of n rows that top_abs searches on parallel threads: one per thread with at least
    SPLIT_ROWS rows each, else one."""
    ranges = max(1, min(threads, n // SPLIT_ROWS))
    cuts = np.linspace(0, n, ranges + 1).astype(int).tolist()
    return list(zip(cuts[:-1], cuts[1:], strict=True))


class PrototypeIndex:
    """Float32 prototypes with their int8 codes, by int64 id; rows kept dense (a removal moves the last
    row into the hole). The codes, scales and norms are held in memory; the float32 rows, read only for
    the candidates of step 3, in a file once the index is large (row_store: `spill` says where and from
    what size)."""

    def __init__(self, dim: int, spill: Spill | None = None):
        self.dim = dim
        self._rows = Rows(dim, spill)
        self.ids: set[int] = set()
        self._row: dict[int, int] = {}
        self._n = 0
        self._id = np.empty(0, dtype=np.int64)
        self._width = -(-dim // CODE_ALIGN) * CODE_ALIGN
        self._code = np.zeros((0, self._width), dtype=np.int8)
        self._scale = np.empty(0, dtype=np.float32)
        self._norm = np.empty(0, dtype=np.float32)
        self._resid = np.empty(0, dtype=np.float32)

    @classmethod
    def from_arrays(cls, ids: np.ndarray, vectors: np.ndarray, spill: Spill | None = None) -> PrototypeIndex:
        """An index of these rows: one held in memory takes `vectors` as its own storage where it can
        (Rows.adopt); a large one writes them to its file."""
        index = cls(vectors.shape[1], spill)
        if not index._rows.adopt(vectors):
            index.add(ids.tolist(), vectors)
            return index
        n = len(ids)
        index._id = np.empty(n, dtype=np.int64)
        index._code = np.zeros((n, index._width), dtype=np.int8)
        index._scale, index._norm, index._resid = (np.empty(n, dtype=np.float32) for _ in range(3))
        index._fill(0, np.asarray(ids, dtype=np.int64), vectors)
        return index

    def __len__(self) -> int:
        return self._n

    def add(self, ids: list[int], vectors: np.ndarray) -> None:
        if not ids:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.remove([i for i in ids if i in self.ids])  # an id added again replaces its vector
        self._reserve(self._n + len(ids))
        self._rows.array[self._n : self._n + len(ids)] = vectors
        self._fill(self._n, np.asarray(ids, dtype=np.int64), vectors)
        self._rows.release()

    def _fill(self, start: int, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Codes, norms and ids of rows start.. (their float32 vectors already in place)."""
        end = start + len(ids)
        codes, scale = quantise(vectors)
        self._id[start:end] = ids
        self._code[start:end, : self.dim] = codes
        self._scale[start:end] = scale
        self._norm[start:end] = np.linalg.norm(vectors, axis=1)
        self._resid[start:end] = np.linalg.norm(vectors - scale[:, None] * codes, axis=1)
        self._row.update((int(i), start + n) for n, i in enumerate(ids.tolist()))
        self.ids.update(ids.tolist())
        self._n = end

    def remove(self, ids: Iterable[int]) -> None:
        for i in ids:
            row = self._row.pop(int(i), None)
            if row is None:
                continue
            self.ids.discard(int(i))
            last = self._n - 1
            if row != last:
                for a in (self._id, self._rows.array, self._code, self._scale, self._norm, self._resid):
                    a[row] = a[last]
                self._row[int(self._id[row])] = row
            self._n = last
        self._rows.release()

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 vectors), in row order, copies of their own: what a snapshot saves (the vectors
        of a file-backed index are a mapped copy of its file, Rows.copy)."""
        return self._id[: self._n].copy(), self._rows.copy(self._n)

    def memory_bytes(self) -> int:
        """What the index holds in memory: codes, scales, norms and ids, and the float32 rows unless they
        are in a file (file_bytes)."""
        return self._n * (self._width + 8 + 12) + (0 if self._rows.in_file else self._n * self.dim * 4)

    def file_bytes(self) -> int:
        """The float32 rows kept in a file (0 for an index that holds them in memory)."""
        return self._n * self.dim * 4 if self._rows.in_file else 0

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._id):
            return
        capacity = max(rows, len(self._id) + len(self._id) // 4, 64)
        self._rows.reserve(capacity, self._n)
        for name in ("_id", "_code", "_scale", "_norm", "_resid"):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            new[: self._n] = old[: self._n]
            setattr(self, name, new)

    def top_abs(
        self, h: np.ndarray, k: int, allowed: np.ndarray | None = None, threads: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each row of h: the min(k, qualifying) ids with the largest |<h, v>| (among `allowed` when
        given), best first, and those values. With threads > 1 and at least SPLIT_ROWS prototypes a
        thread, the rows are split into ranges searched on parallel threads and their top k merged (the
        same answer: each range's top k is exact, ties go to the lower row as in one range)."""
        h = np.ascontiguousarray(h, dtype=np.float32)
        n = self._n
        keep = np.isin(self._id[:n], allowed) if allowed is not None else None
        if min(k, n if keep is None else int(keep.sum())) == 0:
            return np.zeros((h.shape[0], 0), dtype=np.float32), np.zeros((h.shape[0], 0), dtype=np.int64)
        ranges = row_ranges(n, threads)
        try:
            if len(ranges) == 1:
                return self._range_top_abs(h, k, keep, 0, n)
            found = list(_split_pool.map(lambda r: self._range_top_abs(h, k, keep, *r), ranges))
        finally:
            self._rows.release()  # the float32 rows read stay in the page cache, not in the hub's memory
        d, ids = np.concatenate([f[0] for f in found], axis=1), np.concatenate([f[1] for f in found], axis=1)
        best = np.argsort(-d, axis=1, kind="stable")[:, : min(k, d.shape[1])]
        return np.take_along_axis(d, best, axis=1), np.take_along_axis(ids, best, axis=1)

    def _range_top_abs(
        self, h: np.ndarray, k: int, keep: np.ndarray | None, lo: int, hi: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """top_abs over rows lo..hi, h in blocks of tokens (empty where no row of the range qualifies)."""
        kept = None if keep is None else keep[lo:hi]
        k = min(k, hi - lo if kept is None else int(kept.sum()))
        if k == 0:
            return np.zeros((h.shape[0], 0), dtype=np.float32), np.zeros((h.shape[0], 0), dtype=np.int64)
        at_once = max(1, BLOCK // (hi - lo))
        blocks = [self._top_abs(h[i : i + at_once], k, kept, lo, hi) for i in range(0, h.shape[0], at_once)]
        if len(blocks) == 1:
            return blocks[0]
        return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])

    def _top_abs(
        self, h: np.ndarray, k: int, keep: np.ndarray | None, lo: int, hi: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """top_abs for one block of tokens over rows lo..hi; k <= the rows `keep` (of the range) passes."""
        t, n = h.shape[0], hi - lo
        code, vec = self._code[lo:hi], self._rows.array[lo:hi]
        # 1. approximate |<h, v>| from the codes
        levels, s1, s2, h_hat = h_levels(h, self._width)
        p = np.ascontiguousarray(int8_products(torch.from_numpy(code), torch.from_numpy(levels)).numpy(), np.float32)
        h_t = torch.from_numpy(h)
        # 2. the error bound of each |<h, v>|: a[t] r[i] + b[t] ||v_i|| (h's norms in float64: squares of
        # large float32 values overflow), first as its largest over the rows, B[t], a scalar a token
        norm = lambda x: np.linalg.norm(x.astype(np.float64), axis=1)  # noqa: E731
        a, b = norm(h_hat), norm(h - h_hat) + SLACK * norm(h)
        resid, norms, scale = self._resid[lo:hi], self._norm[lo:hi], self._scale[lo:hi]
        big = a * float(resid.max()) + b * float(norms.max())
        # the largest |approx| the codes can give (|products| <= 127 * 127 * width): all below float32's
        # limit, or no bound to trust
        most = (float(s1.max()) + float(s2.max(initial=0))) * 127 * 127 * self._width * float(scale.max())
        most += float(big.max())
        if np.isfinite(most) and most < 1e38 and np.isfinite(h).all():
            # (the t x n arrays are worked on in place: at 1,000,000 prototypes each is 32 MB a block,
            # and every new one is that many pages to fault in)
            approx = p[:t]
            approx *= s1[:, None]
            if len(s2):  # the second level's products
                second = p[t:]
                second *= s2[:, None]
                approx += second
            approx *= scale[None, :]
            np.abs(approx, out=approx)
            # 3. exact scores: first of each token's k best approximate ones, then of every prototype
            # whose upper bound reaches the smallest of those (in torch, like the codes' product:
            # numpy's BLAS threads would spin against torch's): those within B[t] of it, then of
            # those, the ones their own bound keeps
            if keep is not None:
                approx[:, ~keep] = -np.inf
            seeds = torch.topk(torch.from_numpy(approx), k, dim=1, sorted=False).indices.numpy()
            floor = torch.einsum("td,tkd->tk", h_t, torch.from_numpy(vec[seeds])).abs().amin(dim=1).numpy()
            # (the threshold rounded down to float32, so that the t x n comparison stays in float32)
            below = np.nextafter((floor - big).astype(np.float32), np.float32(-np.inf))
            near = np.flatnonzero((approx >= below[:, None]).any(axis=0))
            upper = approx[:, near].astype(np.float64)
            upper += np.multiply.outer(a, resid[near]) + np.multiply.outer(b, norms[near])
            candidate = upper >= floor[:, None]
            kept = candidate.any(axis=0)
            rows, candidate = near[kept], candidate[:, kept]
        else:  # values near float32's limits: every prototype is a candidate
            rows = np.arange(n) if keep is None else np.flatnonzero(keep)
            candidate = np.ones((t, len(rows)), dtype=bool)
        if len(rows) > n // 4:  # the bound kept much: one dense product beats gathering the rows
            exact = (h_t @ torch.from_numpy(vec).T).abs().numpy()[:, rows]
        else:
            exact = (h_t @ torch.from_numpy(vec[rows]).T).abs().numpy()
        exact[~candidate] = -1
        best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, best, axis=1), self._id[lo:hi][rows[best]]


# A module's rows are split between threads only with this many a thread (a million tiny adapters: one
# module of 512 values is 512 MB of codes a request); below it, one thread is as fast.
SPLIT_ROWS = 100_000
_split_pool = ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0)), thread_name_prefix="quiver-rows")
