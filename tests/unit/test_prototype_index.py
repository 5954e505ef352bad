"""PrototypeIndex answers exactly what a dense float32 product over every prototype answers: the same
top k of |<h, v>|, with the same scores, whatever the data does to its int8 codes' error bound; every test
twice, with the float32 rows in memory and in a file (row_store)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from quiver_hub.registry.search import row_store
from quiver_hub.registry.search.indexes import Candidates
from quiver_hub.registry.search.prototype_index import BLOCK, PrototypeIndex
from quiver_hub.registry.search.routing import PARALLEL_WORK, module_weights, score_modules


@pytest.fixture(autouse=True, params=["rows in memory", "rows in a file"])
def storage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path) -> str:
    if request.param == "rows in a file":
        monkeypatch.setattr(row_store, "SPILL_BYTES", 0)
        monkeypatch.setattr(row_store.tempfile, "tempdir", str(tmp_path))
    return request.param


def brute(ids: np.ndarray, vectors: np.ndarray, h: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.abs(h.astype(np.float64) @ vectors.T.astype(np.float64))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def check(index: PrototypeIndex, ids: np.ndarray, vectors: np.ndarray, h: np.ndarray, k: int) -> None:
    got_d, got_i = index.top_abs(h, k)
    want_d, want_i = brute(ids, vectors, h, k)
    assert got_d.shape == want_d.shape == (h.shape[0], min(k, len(ids)))
    np.testing.assert_allclose(got_d, want_d, rtol=1e-5, atol=1e-6)
    # ids equal except where two scores tie to float32 precision; each returned id has its returned score
    by_id = dict(zip(ids.tolist(), range(len(ids)), strict=True))
    for t in range(h.shape[0]):
        rows = [by_id[i] for i in got_i[t]]
        np.testing.assert_allclose(np.abs(vectors[rows] @ h[t]), got_d[t], rtol=1e-5, atol=1e-6)
        assert len(set(got_i[t].tolist())) == len(got_i[t])
        differ = got_i[t] != want_i[t]
        assert np.allclose(got_d[t][differ], want_d[t][differ], rtol=1e-6), (got_i[t], want_i[t])


def filled(vectors: np.ndarray, first_id: int = 1) -> tuple[PrototypeIndex, np.ndarray]:
    index = PrototypeIndex(vectors.shape[1])
    ids = np.arange(first_id, first_id + len(vectors), dtype=np.int64)
    for start in range(0, len(ids), 700):  # in batches, as a rebuild adds them
        index.add(ids[start : start + 700].tolist(), vectors[start : start + 700])
    return index, ids


@pytest.mark.parametrize("dim", [1, 7, 64, 512, 4096])
def test_random_prototypes_and_hidden_states(dim: int) -> None:
    rng = np.random.default_rng(dim)
    vectors = rng.standard_normal((3000, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index, ids = filled(vectors)
    h = rng.standard_normal((16, dim)).astype(np.float32) * 5
    for k in [1, 3, 64]:
        check(index, ids, vectors, h, k)


def test_hidden_states_with_outliers_zeros_and_one_token() -> None:
    """LLM hidden states have a few huge dimensions; a zero row and a single token are fine too."""
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((2000, 256)).astype(np.float32)
    index, ids = filled(vectors)
    h = rng.standard_normal((5, 256)).astype(np.float32)
    h[:, [3, 77]] *= 300
    h[2] = 0
    check(index, ids, vectors, h, 3)
    check(index, ids, vectors, h[:1], 3)


def test_values_near_float32_s_limits_and_exact_codes() -> None:
    """Hidden states whose squares overflow float32, and prototypes their codes hold exactly (error 0):
    the bound never drops the best."""
    rng = np.random.default_rng(8)
    vectors = rng.standard_normal((500, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[:64] = np.eye(64, dtype=np.float32)  # one-hot: v - s c = 0
    index, ids = filled(vectors)
    for scale in [1e-30, 1e25]:
        check(index, ids, vectors, rng.standard_normal((4, 64)).astype(np.float32) * np.float32(scale), 3)
    for big in [1e30, 3e38]:  # 3e38: the codes' products overflow, and every prototype is scored
        h = np.zeros((2, 64), dtype=np.float32)
        h[:, 5] = big  # the one-hot prototype of dimension 5 is the best (|<h, v>| = big; other unit v: less)
        assert (index.top_abs(h, 1)[1][:, 0] == ids[5]).all()


def test_near_ties_and_copies_keep_the_exact_order() -> None:
    """Prototypes that differ by less than their codes can tell: the bound keeps all of them as candidates
    and the float32 scores decide."""
    rng = np.random.default_rng(2)
    base = rng.standard_normal((20, 128)).astype(np.float32)
    vectors = np.repeat(base, 50, axis=0) + rng.standard_normal((1000, 128)).astype(np.float32) * 1e-4
    index, ids = filled(vectors)
    h = rng.standard_normal((8, 128)).astype(np.float32)
    for k in [3, 10]:
        check(index, ids, vectors, h, k)


def test_scores_all_alike_use_the_dense_product() -> None:
    """Every prototype nearly the same, so every score is within the codes' error of the best: the bound
    keeps most rows, and the index scores all of them in one dense product."""
    rng = np.random.default_rng(3)
    direction = rng.standard_normal(300).astype(np.float32)
    vectors = direction + rng.standard_normal((1500, 300)).astype(np.float32) * 1e-2
    h = direction + rng.standard_normal((4, 300)).astype(np.float32)
    index, ids = filled(vectors)
    check(index, ids, vectors, h, 5)


def test_many_tokens_are_scored_in_blocks() -> None:
    """More tokens x prototypes than BLOCK: the tokens are scored a block at a time, same answers."""
    rng = np.random.default_rng(9)
    vectors = rng.standard_normal((4000, 8)).astype(np.float32)
    index, ids = filled(vectors)
    h = rng.standard_normal((BLOCK // 4000 * 2 + 7, 8)).astype(np.float32)
    check(index, ids, vectors, h, 2)


def test_removals_and_replacements() -> None:
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((1200, 96)).astype(np.float32)
    index, ids = filled(vectors)
    gone = rng.choice(ids, 500, replace=False)
    index.remove(gone.tolist())
    index.remove([999_999])  # an id it does not hold: nothing happens
    keep = ~np.isin(ids, gone)
    ids, vectors = ids[keep], vectors[keep]
    again = ids[:100]
    fresh = rng.standard_normal((100, 96)).astype(np.float32) * 3
    index.add(again.tolist(), fresh)  # an id added again replaces its vector
    vectors[:100] = fresh
    assert len(index) == len(ids) and index.ids == set(ids.tolist())
    saved_ids, saved = index.contents()
    order = np.argsort(saved_ids)
    assert (saved_ids[order] == ids).all() and (saved[order] == vectors).all()
    check(index, ids, vectors, rng.standard_normal((6, 96)).astype(np.float32), 3)


@pytest.mark.parametrize("n", [0, 5, 300])
def test_an_index_from_a_snapshot_s_arrays_answers_and_grows(n: int) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((n + 50, 32)).astype(np.float32)
    ids = np.arange(1, n + 51, dtype=np.int64)
    index = PrototypeIndex.from_arrays(ids[:n], vectors[:n].copy())
    index.add(ids[n:].tolist(), vectors[n:])
    index.remove([int(ids[0])])
    check(index, ids[1:], vectors[1:], rng.standard_normal((4, 32)).astype(np.float32), 3)


def test_allowed_ids_and_fewer_than_k() -> None:
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((800, 40)).astype(np.float32)
    index, ids = filled(vectors)
    h = rng.standard_normal((3, 40)).astype(np.float32)
    allowed = ids[rng.random(800) < 0.1]
    got_d, got_i = index.top_abs(h, 5, allowed)
    want_d, want_i = brute(allowed, vectors[allowed - 1], h, 5)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-5)
    assert (got_i == want_i).all()
    got_d, got_i = index.top_abs(h, 5, allowed[:2])
    assert got_i.shape == (3, 2) and set(got_i[0].tolist()) == set(allowed[:2].tolist())
    assert index.top_abs(h, 5, np.array([], dtype=np.int64))[1].shape == (3, 0)
    assert PrototypeIndex(40).top_abs(h, 5)[1].shape == (3, 0)


def test_modules_scored_on_parallel_threads_answer_as_on_one() -> None:
    """With torch on one thread (as `quiver serve` runs it), a large request's modules are split between
    threads; the weights are those of one thread scoring them in turn."""
    rng = np.random.default_rng(6)
    jobs = []
    for m in range(4):
        vectors = rng.standard_normal((2000, 1024)).astype(np.float32)
        index, _ = filled(vectors, first_id=1 + m * 10_000)
        jobs.append(([Candidates(index, None, len(index))], rng.standard_normal((16, 1024)).astype(np.float32)))
    assert on_one_torch_thread(jobs) == one_thread_in_turn(jobs)
    if len(os.sched_getaffinity(0)) > 1:  # the threads did run
        assert any(t.name.startswith("quiver-route") for t in threading.enumerate())


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread, as `quiver serve` runs it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def one_thread_in_turn(jobs: list) -> list[dict[int, float]]:
    """Each module's weights in turn, torch on one thread too: its product on two threads can round
    differently (it does on AVX-512 machines), and the weights would differ in their last digits."""
    with one_torch_thread():
        return [module_weights(parts, h, 3, 1.0) for parts, h in jobs]


def on_one_torch_thread(jobs: list) -> list[dict[int, float]]:
    """score_modules of a request large enough for threads, with torch on one thread as `quiver serve`
    runs it."""
    assert sum(h.size * len(parts[0].index) for parts, h in jobs) >= PARALLEL_WORK
    with one_torch_thread():
        return score_modules(jobs, top_k=3, temperature=1.0)


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_rows_split_between_threads_answer_as_one_range(monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """A large module's rows are searched in ranges on parallel threads (one module of a million tiny
    adapters): the same ids as one range and its scores (to float32's rounding: a product over other rows
    may sum in another order), with filters, ties and fewer rows than k."""
    from quiver_hub.registry.search import prototype_index

    monkeypatch.setattr(prototype_index, "SPLIT_ROWS", 100)
    rng = np.random.default_rng(8)
    vectors = rng.standard_normal((1000, 64)).astype(np.float32)
    vectors[500] = vectors[10]  # a tie across ranges: the lower row first, as in one range
    index, ids = filled(vectors)
    h = rng.standard_normal((5, 64)).astype(np.float32)
    h[0] = vectors[10]
    for allowed in (None, ids[rng.random(1000) < 0.05], ids[[3, 998]]):
        one = index.top_abs(h, 4, allowed)
        split = index.top_abs(h, 4, allowed, threads=threads)
        assert (split[1] == one[1]).all()
        np.testing.assert_allclose(split[0], one[0], rtol=1e-5, atol=1e-6)
    check(index, ids, vectors, h, 4)
    assert index.top_abs(h, 4, threads=threads)[1][0, :2].tolist() == [11, 501]


def test_one_large_module_is_split_between_the_threads() -> None:
    """A request of one module over many prototypes is scored on every thread torch leaves: the weights of
    one thread."""
    rng = np.random.default_rng(9)
    index, _ = filled(rng.standard_normal((260_000, 16)).astype(np.float32))
    jobs = [([Candidates(index, None, len(index))], rng.standard_normal((16, 16)).astype(np.float32))]
    assert on_one_torch_thread(jobs) == one_thread_in_turn(jobs)
    if len(os.sched_getaffinity(0)) > 1:  # the rows' threads did run
        assert any(t.name.startswith("quiver-rows") for t in threading.enumerate())
