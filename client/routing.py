"""What Hub.route answers, and how one long input is routed over several requests.

A route request holds at most the hub's `max_rows` token rows over all its modules. A longer input (many
tokens, many modules) is split: modules are grouped so each request stays within the limit (a module with
more tokens than the limit is split by tokens), each request asks for every adapter's score
(`all_scores`) and names the input's other modules with no token rows (so the hub divides each adapter's
weight by the routed modules it adapts over the whole input), and the scores are combined with each
request's share: a request over M_r of the M modules counts M_r / M, a chunk of T_c of a module's T
tokens counts T_c / (T M). The result is the score one request over everything would have given
(registry/search/routing.py: the scores are averages over tokens, then over each adapter's routed modules).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save

from quiver_hub.results import Hit


class Routing(list):
    """Hub.route's answer: the adapters, best first, each a Hit ({"id", "version", "revision", "score", ...})."""

    def merge_plan(self, min_share: float = 0.0) -> list[tuple[str, float]]:
        """The recommended way from this answer to a merged model: [("ns/name@revision", weight)], for
        `merged(model, [hub.pull(spec) for spec, _ in plan], [w for _, w in plan])`.

        The best adapter alone, at full weight: on the real-library benchmark (bench/README.md,
        "Retrieval on a real library") it recovers more of the right adapter's gain than merging the
        routed adapters weighted by their scores (which sum to 1 over nearly every adapter, so each delta
        is scaled down) or a uniform merge. With `min_share` (0 to 1), runners-up whose score is at least
        that fraction of the best one's join it, the weights renormalised to sum to 1.
        """
        if not self:
            return []
        best = self[0]["score"]
        chosen = [r for r in self if r is self[0] or (min_share > 0 and r["score"] >= min_share * best)]
        total = sum(r["score"] for r in chosen)
        return [(f"{r['id']}@{r['revision']}", r["score"] / total) for r in chosen]


Rows = dict[str, torch.Tensor]


def split_requests(hidden: Mapping[str, Any], max_rows: int) -> list[tuple[float, Rows]]:
    """[(weight, the states of one request)] covering every module and token of `hidden` once; each
    request holds the other modules with no rows."""
    states = {m: torch.as_tensor(h).reshape(-1, torch.as_tensor(h).shape[-1]) for m, h in hidden.items()}
    requests = [(weight, {**placeholders(states), **rows}) for weight, rows in groups(states, max_rows)]
    return requests if len(requests) > 1 else [(1.0, states)]


def placeholders(states: Rows) -> Rows:
    """Every module with no token rows (0 x in_features)."""
    return {m: h[:0] for m, h in states.items()}


def groups(states: Rows, max_rows: int) -> list[tuple[float, Rows]]:
    """[(share, rows)]: the modules grouped within max_rows, a longer module alone in chunks of tokens."""
    total = len(states)
    requests: list[tuple[float, Rows]] = []
    group: Rows = {}
    rows = 0
    for module, h in states.items():
        tokens = h.shape[0]
        if tokens > max_rows:  # alone, in chunks of tokens
            for start in range(0, tokens, max_rows):
                chunk = h[start : start + max_rows]
                requests.append((chunk.shape[0] / (tokens * total), {module: chunk}))
            continue
        if rows + tokens > max_rows:
            requests.append((len(group) / total, group))
            group, rows = {}, 0
        group[module] = h
        rows += tokens
    if group:
        requests.append((len(group) / total, group))
    return requests


def combine(answers: list[tuple[float, list[dict]]], limit: int) -> Routing:
    """The weighted sum of several requests' scores (each answer holding every adapter above zero), best
    first, ties by name, at most `limit`."""
    merged: dict[str, dict] = {}
    for weight, results in answers:
        for r in results:
            entry = merged.setdefault(r["revision"], Hit({**r, "score": 0.0}))
            entry["score"] += weight * r["score"]
    best = sorted(merged.values(), key=lambda r: (-r["score"], r["id"]))
    return Routing(r for r in best[:limit] if r["score"] > 0)


def routing_payload(hidden_states: Mapping[str, Any]) -> bytes:
    """What POST /v1/route reads: safetensors of fp32 tokens x in_features per module, from tensors of
    any shape (..., in_features), device and dtype, or numpy arrays."""
    arrays = {}
    for module, h in hidden_states.items():
        h = torch.as_tensor(h).detach().to("cpu", torch.float32)
        arrays[module] = np.ascontiguousarray(h.reshape(-1, h.shape[-1]).numpy())
    return save(arrays)
