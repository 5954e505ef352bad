"""Answering "which adapters fit this input?": Arrow retrieval on hidden states, and text search.

Arrow retrieval (DESIGN.md): for each module m and token t, over the candidate adapters e that have
a prototype v_e,m for m: logit = |<h_t,m, v_e,m>| / T; keep the top k; softmax over those k; the
others get 0. An adapter's score is its weight averaged over tokens, then over the given modules.
The top k by |logit| is exact: the union of FAISS inner-product searches with h and with -h.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from registry.accounts import Principal
from registry.errors import InvalidRequest
from registry.indexes import Entry, Filters, FlatIndex, IndexSet

MAX_TOKENS = 8192  # over all modules of one request
MAX_MODULES = 1024
MAX_TOP_K = 64
MAX_LIMIT = 100


@dataclass(frozen=True)
class Ranked:
    entry: Entry
    score: float


def check_params(top_k: int, temperature: float, limit: int) -> None:
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidRequest(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise InvalidRequest(f"temperature must be a positive number, got {temperature}")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")


def route(
    indexes: IndexSet,
    principal: Principal,
    hidden: dict[str, np.ndarray],
    filters: Filters,
    top_k: int = 3,
    temperature: float = 1.0,
    limit: int = 10,
) -> list[Ranked]:
    check_params(top_k, temperature, limit)
    if not filters.base_model:
        raise InvalidRequest(
            "base_model is required: prototypes are compared within one base model", code="unknown_base_model"
        )
    if not hidden:
        raise InvalidRequest("hidden_states is empty: give at least one module's token rows")
    if len(hidden) > MAX_MODULES:
        raise InvalidRequest(f"at most {MAX_MODULES} modules per request, got {len(hidden)}")
    tokens = sum(h.shape[0] for h in hidden.values())
    if tokens > MAX_TOKENS:
        raise InvalidRequest(
            f"at most {MAX_TOKENS} token rows per request (over all modules), got {tokens}", code="too_many_tokens"
        )

    with indexes.lock:
        visible = indexes.visible(principal, filters)
        known = {m for e in visible.values() for m in e.modules}
        if not known:
            raise InvalidRequest(
                f"no adapters you can see for base model {filters.base_model!r}", code="unknown_base_model"
            )
        for module, h in hidden.items():
            if module not in known:
                sample = ", ".join(sorted(known)[:5]) + (", ..." if len(known) > 5 else "")
                raise InvalidRequest(
                    f"no adapter for {filters.base_model} adapts module {module!r} (known modules: {sample})",
                    code="unknown_module",
                )
            index = indexes.prototypes[(filters.base_model, module)]
            if h.ndim != 2 or h.shape[1] != index.dim or h.shape[0] == 0:
                raise InvalidRequest(
                    f"hidden_states[{module!r}] must be tokens x {index.dim} "
                    f"(the module's in_features), got {list(h.shape)}",
                    code="bad_dimension",
                )
            if not np.isfinite(h).all():
                raise InvalidRequest(f"hidden_states[{module!r}] contains NaN or infinite values", code="not_finite")

        scores: dict[int, float] = {}
        for module, h in hidden.items():
            index = indexes.prototypes[(filters.base_model, module)]
            allowed = np.fromiter((v for v in visible if v in index.ids), dtype=np.int64)
            for version_id, weight in module_weights(index, h, allowed, top_k, temperature).items():
                scores[version_id] = scores.get(version_id, 0.0) + weight / len(hidden)
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], visible[kv[0]].identity.id))[:limit]
        return [Ranked(visible[v], s) for v, s in ranked if s > 0]


def module_weights(
    index: FlatIndex, h: np.ndarray, allowed: np.ndarray, top_k: int, temperature: float
) -> dict[int, float]:
    """Arrow routing weights for one module, averaged over its tokens, by version id."""
    n = len(allowed)
    if n == 0:
        return {}
    k = min(top_k, n)
    q = np.ascontiguousarray(h, dtype=np.float32)
    if n <= 2 * k:  # every candidate fits in one search: rank them all by |<h, v>|
        d, ids = index.search(q, n, allowed)
        d = np.abs(d)
    else:  # the k largest |<h, v>| are among the k largest of <h, v> and the k largest of <-h, v>
        d_pos, i_pos = index.search(q, k, allowed)
        d_neg, i_neg = index.search(-q, k, allowed)
        d, ids = np.concatenate([d_pos, d_neg], axis=1), np.concatenate([i_pos, i_neg], axis=1)
    order = np.argsort(-d, axis=1, kind="stable")[:, :k]
    top_d = np.take_along_axis(d, order, axis=1).astype(np.float64) / temperature
    top_i = np.take_along_axis(ids, order, axis=1)
    top_d -= top_d.max(axis=1, keepdims=True)
    w = np.exp(top_d)
    w /= w.sum(axis=1, keepdims=True)
    unique, inverse = np.unique(top_i, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=w.ravel(), minlength=len(unique)) / h.shape[0]
    return {int(v): float(s) for v, s in zip(unique, sums, strict=True) if v >= 0}


def search_text(
    indexes: IndexSet,
    principal: Principal,
    query: np.ndarray,
    filters: Filters,
    limit: int,
    use_text: bool = True,
    use_examples: bool = True,
) -> list[Ranked]:
    """Rank by cosine of the query embedding to the adapters' text and/or example embeddings
    (the larger of the two when both are used)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    with indexes.lock:
        visible = indexes.visible(principal, filters)
        scores: dict[int, float] = {}
        for use, index in ((use_text, indexes.text), (use_examples, indexes.examples)):
            allowed = np.fromiter((v for v in visible if v in index.ids), dtype=np.int64)
            if not use or len(allowed) == 0:
                continue
            d, ids = index.search(query[None, :], min(limit, len(allowed)), allowed)
            for score, version_id in zip(d[0], ids[0], strict=True):
                if version_id >= 0:
                    scores[int(version_id)] = max(scores.get(int(version_id), -1.0), float(score))
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], visible[kv[0]].identity.id))[:limit]
        return [Ranked(visible[v], s) for v, s in ranked]
