"""Answering "which adapters fit this input?": Arrow retrieval on hidden states, and text search.

Arrow retrieval (docs/architecture.md, "Finding adapters"): for each module m and token t, over the
candidate adapters e that have a prototype v_e,m for m: logit = |<h_t,m, v_e,m>| / T; keep the top k;
softmax over those k; the others get 0. An adapter's score is its weight averaged over tokens, then
over the routed modules it adapts: an adapter of the attention projections alone, or of the top layers
alone, is not outvoted by one of every projection of every layer for adapting less of what is routed
(bench/README.md, "Zero-shot routing on libraries no default was chosen on"). The top k by |logit| is
exact (PrototypeIndex: int8 codes, an error bound, and float32 scores of the candidates); the modules of
a large request are scored on parallel threads.

A module sent with no token rows (tokens x in_features with zero tokens) belongs to the input but is
scored in another request: a client that splits one long input over several requests sends every
module in each, so each adapter's count of routed modules is the whole input's. Such a request's scores
stand for the whole input, scaled by modules / modules with rows; the client weights each answer by the
inverse (client/routing.py), so the combined score is the one a single request would have given.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import torch
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.accounts.access import Principal, can_read
from quiver_hub.registry.catalogue.base_models import close_to
from quiver_hub.registry.catalogue.reads import visible_versions
from quiver_hub.registry.errors import InvalidRequest
from quiver_hub.registry.limits import MAX_ROUTE_MODULES, MAX_ROUTE_RESULTS, MAX_ROUTE_TOKENS, MAX_TOP_K
from quiver_hub.registry.memory import release_freed_memory
from quiver_hub.registry.search.indexes import PUBLIC, Candidates, Entry, Filters, IndexSet, PartitionedIndex


@dataclass(frozen=True)
class Ranked:
    entry: Entry
    score: float


def visible_now(sessions: sessionmaker[Session], principal: Principal, results: list[Ranked]) -> list[Ranked]:
    """The results the database says the caller may see now. The indexes are partitioned by visibility
    already; this is the second lock on the door, against an index that disagrees with the database (a
    snapshot someone altered, a visibility change not yet caught up)."""
    if not results:
        return results
    with sessions() as session:
        keep = visible_versions(session, principal, {r.entry.version_id for r in results})
    return [r for r in results if r.entry.version_id in keep]


def check_params(top_k: int, temperature: float, limit: int) -> None:
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidRequest(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise InvalidRequest(f"temperature must be a positive number, got {temperature}")
    if not 1 <= limit <= MAX_ROUTE_RESULTS:
        raise InvalidRequest(f"limit must be between 1 and {MAX_ROUTE_RESULTS}, got {limit}")


def route(
    indexes: IndexSet,
    principal: Principal,
    hidden: dict[str, np.ndarray],
    filters: Filters,
    top_k: int = 3,
    temperature: float = 1.0,
    limit: int = 10,
    all_scores: bool = False,
    examples_query: np.ndarray | None = None,
) -> list[Ranked]:
    """Adapters ranked by the formula above, best first: the `limit` best, or with `all_scores` every one
    with a score above zero (what a client that splits one long input over several requests combines:
    the answers' scores add up, weighted by each request's share of the modules and tokens).

    With `examples_query` (the MiniLM embedding of the input's text), method "arrow+examples": the score
    is the average of the Arrow score and the adapter's share of softmax(cos / EXAMPLES_TEMPERATURE) of
    that text to the mean embedding of its examples.jsonl, over the candidates of this base model that
    have examples (the others get 0 from that half; with none, the Arrow score alone)."""
    check_params(top_k, temperature, limit)
    base = filters.base_model
    if not base:
        raise InvalidRequest(
            "base_model is required: prototypes are compared within one base model", code="unknown_base_model"
        )
    check_hidden(hidden)
    within = replace(filters, base_model=None)  # the prototype indexes are already per base model

    with indexes.lock:
        per_module: dict[str, list[Candidates]] = {}
        for module, h in hidden.items():
            index = indexes.prototypes.get((base, module, h.shape[1]))
            per_module[module] = indexes.candidates(index, principal, within) if index else []
            if not per_module[module]:
                raise unknown(indexes, principal, within, base, module, h.shape[1])

        scored = [(per_module[m], h) for m, h in hidden.items() if h.shape[0]]
        sums: dict[int, float] = {}
        for weights in score_modules(scored, top_k, temperature):
            for version_id, weight in weights.items():
                sums[version_id] = sums.get(version_id, 0.0) + weight
        routed = {(m, h.shape[1]) for m, h in hidden.items()}
        scores = own_module_means(indexes, sums, routed, len(hidden) / len(scored))
        if examples_query is not None and (text := example_shares(indexes, principal, filters, examples_query)):
            scores = {v: (scores.get(v, 0.0) + text.get(v, 0.0)) / 2 for v in scores.keys() | text.keys()}
        return ranked(indexes, scores, len(scores) if all_scores else limit, keep=lambda s: s > 0)


def check_hidden(hidden: dict[str, np.ndarray]) -> None:
    """Each module's states are tokens x in_features of finite values, at least one module has rows,
    and the request is within the hub's limits."""
    if len(hidden) > MAX_ROUTE_MODULES:
        raise InvalidRequest(f"at most {MAX_ROUTE_MODULES} modules per request, got {len(hidden)}")
    for module, h in hidden.items():
        if h.ndim != 2 or h.shape[1] == 0:
            raise InvalidRequest(
                f"hidden_states[{module!r}] must be tokens x in_features, got {list(h.shape)}", code="bad_dimension"
            )
    tokens = sum(h.shape[0] for h in hidden.values())
    if not tokens:
        raise InvalidRequest("hidden_states is empty: give at least one module's token rows")
    if tokens > MAX_ROUTE_TOKENS:
        raise InvalidRequest(
            f"at most {MAX_ROUTE_TOKENS} token rows per request (over all modules), got {tokens}",
            code="too_many_tokens",
        )
    for module, h in hidden.items():  # last: the one pass over every value, once the sizes are bounded
        if not np.isfinite(h).all():
            raise InvalidRequest(f"hidden_states[{module!r}] contains NaN or infinite values", code="not_finite")


def own_module_means(
    indexes: IndexSet, sums: dict[int, float], routed: set[tuple[str, int]], scale: float
) -> dict[int, float]:
    """Each adapter's summed weight divided by how many of the routed (module, in_features) it adapts,
    times `scale` (1 for a request over the whole input). Adapters of one form share one module set
    (IndexSet.module_set), so each form's count is taken once."""
    counts: dict[frozenset[tuple[str, int]], int] = {}
    scores = {}
    for version_id, total in sums.items():
        modules = indexes.by_version[version_id].modules
        if (n := counts.get(modules)) is None:
            n = counts[modules] = len(modules & routed)
        scores[version_id] = scale * total / n
    return scores


EXAMPLES_TEMPERATURE = 0.05  # cosines of MiniLM embeddings are close: a sharp softmax separates them


def example_shares(indexes: IndexSet, principal: Principal, filters: Filters, query: np.ndarray) -> dict[int, float]:
    """softmax(cos(query, examples_e) / EXAMPLES_TEMPERATURE) over every candidate with examples that the
    caller may see and the filters (base model included) pass."""
    cosines: dict[int, float] = {}
    for part in indexes.candidates(indexes.examples, principal, filters):
        d, ids = part.index.search(query[None, :], part.count, part.allowed)
        cosines.update((int(v), float(s)) for s, v in zip(d[0], ids[0], strict=True) if v >= 0)
    if not cosines:
        return {}
    values = np.array(list(cosines.values()), dtype=np.float64) / EXAMPLES_TEMPERATURE
    weights = np.exp(values - values.max())
    weights /= weights.sum()
    return dict(zip(cosines, weights.tolist(), strict=True))


def visible_modules(
    indexes: IndexSet, principal: Principal, base_model: str, filters: Filters = Filters()
) -> dict[str, int]:
    """The modules that adapters of base_model the caller may see (and the filters pass) adapt, with
    their in_features: what a route request may name. Where adapters disagree on a module's width, the
    width most public adapters have (then most of those the caller may see)."""
    best: dict[str, tuple[tuple[int, int], int]] = {}
    for (b, m, width), index in sorted(indexes.prototypes.items()):
        if b == base_model:
            parts = indexes.candidates(index, principal, filters)
            counts = (sum(c.count for c in parts if c.index is index.parts.get(PUBLIC)), sum(c.count for c in parts))
            if counts[1] and counts > best.get(m, ((0, 0), 0))[0]:
                best[m] = (counts, width)
    return {m: width for m, (_, width) in sorted(best.items())}


def unknown_base_model(indexes: IndexSet, principal: Principal, base: str) -> str | None:
    """Why nothing of `base` can be found, naming the close base models of the adapters the caller may
    see (a typo); None when the caller sees adapters of it."""
    seen = {e.base_model for e in indexes.entries.values() if can_read(principal, e.namespace_id, e.visibility)}
    if base in seen:
        return None
    close = close_to(base, seen)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"no adapters you can see for base model {base!r}{hint}"


def unknown(
    indexes: IndexSet, principal: Principal, within: Filters, base: str, module: str, width: int
) -> InvalidRequest:
    """The error for a module without candidates of that width: a wrong width, an unknown module, or a
    base model the caller has no adapter of."""
    if not indexes.choice.chooses(module):
        return InvalidRequest(
            f"this hub routes only on the modules matching {indexes.route_modules!r} (QUIVER_ROUTE_MODULES); "
            f"{module!r} is not one of them (GET /v1/route/modules lists them)",
            code="unknown_module",
        )
    known = visible_modules(indexes, principal, base, within)
    if not known:
        why = unknown_base_model(indexes, principal, base) or f"no adapters you can see for base model {base!r}"
        return InvalidRequest(why, code="unknown_base_model")
    if module in known:
        return InvalidRequest(
            f"hidden_states[{module!r}] rows have {width} values, but {module} of {base} takes {known[module]} "
            "(the module's in_features)",
            code="bad_dimension",
        )
    names = list(known)
    sample = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return InvalidRequest(
        f"no adapter for {base} adapts module {module!r} (known modules: {sample})", code="unknown_module"
    )


# A request with at least this many multiply-adds (tokens x width x prototypes, over its modules) is
# scored on parallel threads, its modules split between them: one thread per core that torch's own pool
# leaves (`quiver serve` gives torch one thread, QUIVER_ANALYSIS_THREADS). Below it, starting threads
# costs more than it saves.
PARALLEL_WORK = 64_000_000
_pool = ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0)), thread_name_prefix="quiver-route")  # lazy threads


def score_modules(
    jobs: list[tuple[list[Candidates], np.ndarray]], top_k: int, temperature: float
) -> list[dict[int, float]]:
    """module_weights of each (candidates, hidden states) job, in order."""
    threads = max(1, len(os.sched_getaffinity(0)) // torch.get_num_threads())
    work = sum(h.shape[0] * h.shape[1] * sum(p.count for p in parts) for parts, h in jobs)
    if threads == 1 or work < PARALLEL_WORK:
        found = [module_weights(parts, h, top_k, temperature) for parts, h in jobs]
    elif len(jobs) < threads:  # fewer modules than threads: each module's rows are split between them
        found = [module_weights(parts, h, top_k, temperature, threads // len(jobs)) for parts, h in jobs]
    else:
        share = -(-len(jobs) // threads)
        groups = [jobs[i : i + share] for i in range(0, len(jobs), share)]
        done = _pool.map(lambda group: [module_weights(parts, h, top_k, temperature) for parts, h in group], groups)
        found = [weights for group in done for weights in group]
    if work >= PARALLEL_WORK:
        # A large request's temporaries, freed, stay in glibc's heaps of each thread that scored it: at
        # 1,000 7B-shaped adapters 59 MiB after 20 routes, 20 MiB with this (0.5 ms; bench/README.md,
        # "Resident memory")
        release_freed_memory()
    return found


def module_weights(
    parts: list[Candidates], h: np.ndarray, top_k: int, temperature: float, threads: int = 1
) -> dict[int, float]:
    """Arrow routing weights for one module, averaged over its tokens, by version id (a large partition's
    rows searched on `threads` threads: PrototypeIndex.top_abs)."""
    k = min(top_k, sum(p.count for p in parts))
    q = np.ascontiguousarray(h, dtype=np.float32)
    found = [p.index.top_abs(q, k, p.allowed, threads) for p in parts]
    d, ids = np.concatenate([f[0] for f in found], axis=1), np.concatenate([f[1] for f in found], axis=1)
    order = np.argsort(-d, axis=1, kind="stable")[:, :k]
    logits = np.take_along_axis(d, order, axis=1).astype(np.float64) / temperature
    top = np.take_along_axis(ids, order, axis=1)
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    unique, inverse = np.unique(top, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=w.ravel(), minlength=len(unique)) / q.shape[0]
    return {int(v): float(s) for v, s in zip(unique, sums, strict=True)}


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
    if not 1 <= limit <= MAX_ROUTE_RESULTS:
        raise InvalidRequest(f"limit must be between 1 and {MAX_ROUTE_RESULTS}, got {limit}")
    used: list[PartitionedIndex] = [i for use, i in ((use_text, indexes.text), (use_examples, indexes.examples)) if use]
    with indexes.lock:
        scores: dict[int, float] = {}
        for index in used:
            for part in indexes.candidates(index, principal, filters):
                d, ids = part.index.search(query[None, :], min(limit, part.count), part.allowed)
                for score, version_id in zip(d[0], ids[0], strict=True):
                    if version_id >= 0:
                        scores[int(version_id)] = max(scores.get(int(version_id), -1.0), float(score))
        return ranked(indexes, scores, limit)


def ranked(
    indexes: IndexSet, scores: dict[int, float], limit: int, keep: Callable[[float], bool] = lambda s: True
) -> list[Ranked]:
    """Best first (ties by name), at most `limit`."""
    best = sorted(scores.items(), key=lambda kv: (-kv[1], indexes.by_version[kv[0]].identity.id))[:limit]
    return [Ranked(indexes.by_version[v], s) for v, s in best if keep(s)]
