"""Compressing a library into cluster adapters (issue 30): how much of its own adapter's gain each task
keeps when its cluster's adapter stands in for it, at k = n/3 clusters of bench/libraries.py's libraries.

    python -m bench.zeroshot_merge       # ~25 min on two cores, after bench/libraries.py
    QUIVER_BENCH_REUSE=1 python -m bench.zeroshot_merge   # clusters the last run measured are not measured again

Each adapter's exact delta is what merging it alone into SmolLM2-135M-Instruct changes
(quiver_hub.merged, equal to PEFT's merge_and_unload; DoRA's magnitudes included). A cluster's adapter
adds a merge of its members' deltas to the base: their average (the hub's `merge_clusters`: for LoRA
members exactly the concatenated factors it publishes), their sum scaled by 1/2, 2/3 or 1 (task
arithmetic), or PEFT's TIES at density 0.2 and 0.5. The hub refuses to average DoRA members (their
magnitudes do not average); here their dense deltas are merged, so those numbers bound what a merge of
such clusters could keep.

Partitions into three clusters: the hub's MBC default (`outputs-middle`, k = 3), the families' own
grouping, the paper authors' MBC (MTTL, bench/mttl_peer.py, where it runs), the partition into three of
three whose members are least alike (for compression rather than organising: `least_alike`), and random
partitions of three of three. Retention is the summed gain over the
base of the tasks whose adapter beats the base, sum(cluster - base) / sum(own - base), exact match on
the same 20 held-out inputs a task as every benchmark of these libraries. The merge is chosen
leave-one-library-out: the one whose worst retention on the other two libraries (MBC's partition) is
highest, reported on the third.
"""

from __future__ import annotations

import itertools
import os
import pickle
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from peft.utils import merge_utils

from bench import mttl_peer
from bench.common import table
from bench.libraries import LIBRARIES, adapters, split, train_library
from bench.real_library import accuracy, cache_dir, load_model
from bench.zeroshot_clusters import library_sketches
from quiver_hub import merged
from quiver_hub.registry.clusters import mbc
from quiver_hub.registry.lora import algebra

Deltas = dict[str, torch.Tensor]


def weighted(weight: float | None) -> Callable[[list[Deltas]], Deltas]:
    """weight * (the sum of the members' deltas); None: 1/n, their average."""

    def merge(members: list[Deltas]) -> Deltas:
        w = 1 / len(members) if weight is None else weight
        out: Deltas = {}
        for d in members:
            for n, delta in d.items():
                out[n] = out[n] + w * delta if n in out else w * delta
        return out

    return merge


def ties(density: float) -> Callable[[list[Deltas]], Deltas]:
    """PEFT's TIES (peft.utils.merge_utils.ties: each delta's largest `density` of entries kept, the
    sign elected by total mass, the agreeing entries averaged), weight 1 each, tensor by tensor; a member
    without a tensor counts as zeros there."""

    def merge(members: list[Deltas]) -> Deltas:
        names = sorted({n for d in members for n in d})
        out = {}
        for n in names:
            like = next(d[n] for d in members if n in d)
            tensors = [d[n] if n in d else torch.zeros_like(like) for d in members]
            out[n] = merge_utils.ties(tensors, torch.ones(len(members)), density)
        return out

    return merge


MERGES = {
    "average (the hub's)": weighted(None),
    "sum x 1/2": weighted(1 / 2),
    "sum x 2/3": weighted(2 / 3),
    "sum": weighted(1.0),
    "TIES, density 0.2": ties(0.2),
    "TIES, density 0.5": ties(0.5),
}
HUB = "average (the hub's)"
BOUND = [HUB]  # merges measured on every cluster of three: the best partition, knowing the answers
RANDOM = 3  # random partitions of 3 x 3 a library


@torch.no_grad()
def deltas(model: torch.nn.Module, folder) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """What merging the adapter alone changes: parameter name -> merged minus base (float32)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with merged(model, folder):
        after = dict(model.named_parameters())
        return {n: after[n] - before[n] for n in before if not torch.equal(after[n], before[n])}


@contextmanager
def added(model: torch.nn.Module, deltas: Deltas):
    """The model with the deltas added, restored exactly on exit."""
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in deltas}
    with torch.no_grad():
        for n, delta in deltas.items():
            params[n].add_(delta)
    try:
        yield model
    finally:
        with torch.no_grad():
            for n, original in saved.items():
                params[n].copy_(original)


def partitions(library: str, rng: np.random.Generator) -> dict[str, list[int]]:
    """Labels of the library's adapters (in bench.libraries.adapters' order) for each grouping."""
    items, outputs, _, _ = library_sketches(library)
    everything = {m for modules, _ in outputs for m in modules}
    hub = mbc.cluster(mbc.sketch_matrix(outputs, algebra.output_block(), mbc.middle_layers(everything)), 3).labels
    families = sorted({t.family for t, _, _ in items})
    out = {"MBC default (outputs-middle, k = 3)": [int(x) for x in hub]}
    out["the families"] = [families.index(t.family) for t, _, _ in items]
    folders = train_library(library)
    for given, said in mttl_peer.partitions({library: [folders[t.name] for t, _, _ in items]})[library].items():
        if "labels" in said:  # MTTL cannot embed adapters of mixed forms (bench/zeroshot_clusters.py says why)
            out[f"MTTL's MBC, {given}"] = said["labels"]
    S = mbc.similarity_rows(mbc.sketch_matrix(outputs, algebra.output_block()), seed=0)
    out["least alike (outputs, for compression)"] = least_alike(S)
    for i in range(RANDOM):
        out[f"random {i + 1}"] = [int(x) for x in rng.permutation(np.arange(len(items)) % 3)]
    return out


def three_of_three(n: int = 9) -> Iterator[list[tuple[int, ...]]]:
    """Every partition of range(n) into three groups of n/3 (280 of nine)."""
    size = n // 3
    for first in itertools.combinations(range(1, n), size - 1):
        rest = [i for i in range(1, n) if i not in first]
        for second in itertools.combinations(rest[1:], size - 1):
            yield [(0, *first), (rest[0], *second), tuple(i for i in rest[1:] if i not in second)]


def least_alike(S: np.ndarray) -> list[int]:
    """The partition into three of three whose members are least alike: the smallest sum of similarities
    within clusters, over every such partition. A sum of deltas that write to different outputs
    interferes less on each member's inputs."""
    best = min(three_of_three(len(S)), key=lambda gs: sum(S[i, j] for g in gs for i, j in itertools.combinations(g, 2)))
    return [next(c for c, g in enumerate(best) if i in g) for i in range(len(S))]


def measure(library: str, rng: np.random.Generator) -> tuple[dict, dict, dict, dict]:
    """(base and own accuracy per task, labels per grouping, {(grouping, merge): accuracy per task},
    {(cluster, merge): accuracy per member task} for every cluster of three and the BOUND merges)."""
    folders = train_library(library)
    items = adapters(library)
    model, tokenizer = load_model()
    held_out = {t.name: split(t, recipe)[1] for t, recipe, _ in items}
    tasks = {t.name: t for t, _, _ in items}
    score = lambda name: accuracy(model, tokenizer, tasks[name], held_out[name])  # noqa: E731
    # a cluster met again is not measured again; QUIVER_BENCH_REUSE=1: nor what the last run measured
    done: dict = {}
    saved = cache_dir() / f"zeroshot-merge-{library}-clusters.pickle"
    if os.environ.get("QUIVER_BENCH_REUSE") and saved.is_file():
        done = pickle.loads(saved.read_bytes())
    for name in tasks:
        if ("own", name) not in done:
            with merged(model, folders[name]):
                done["own", name] = score(name)
            done["base", name] = score(name)
    own = {name: done["own", name] for name in tasks}
    base = {name: done["base", name] for name in tasks}
    solo: dict[str, Deltas] = {}  # each adapter's delta, when a cluster first needs it

    def cluster_accuracy(members: frozenset, how: str) -> dict[str, float]:
        """Each member task's accuracy with the cluster's adapter (merged as `how`) in place of its own."""
        if (members, how) not in done:
            for n in members - solo.keys():
                solo[n] = deltas(model, folders[n])
            with added(model, MERGES[how]([solo[n] for n in sorted(members)])):
                done[members, how] = {n: score(n) for n in members}
        return done[members, how]

    groupings = partitions(library, rng)
    names = list(tasks)
    results = {}
    for grouping, labels in groupings.items():
        for how in MERGES:
            per_task = {}
            for c in set(labels):
                per_task.update(
                    cluster_accuracy(frozenset(n for n, lb in zip(names, labels, strict=True) if lb == c), how)
                )
            results[grouping, how] = per_task
        saved.write_bytes(pickle.dumps(done))
        print(f"  {library}: {grouping} done", file=sys.stderr)
    triples = {}  # every cluster of three, for the best partition chosen knowing the answers
    for how in BOUND:
        for members in map(frozenset, itertools.combinations(names, 3)):
            triples[members, how] = cluster_accuracy(members, how)
        saved.write_bytes(pickle.dumps(done))
        print(f"  {library}: every cluster of three, {how}, done", file=sys.stderr)
    return {"base": base, "own": own}, groupings, results, triples


def retention(accuracies: dict[str, float], ends: dict) -> float:
    """sum(cluster - base) / sum(own - base) over the tasks whose adapter beats the base."""
    gaining = [n for n in accuracies if ends["own"][n] > ends["base"][n]]
    gain = sum(ends["own"][n] - ends["base"][n] for n in gaining)
    return sum(accuracies[n] - ends["base"][n] for n in gaining) / gain


def main() -> None:
    measured = {
        library: measure(library, np.random.default_rng(sorted(LIBRARIES).index(library))) for library in LIBRARIES
    }
    share = {
        (library, grouping, how): retention(acc, ends)
        for library, (ends, _, results, _) in measured.items()
        for (grouping, how), acc in results.items()
    }
    groupings = list(next(iter(measured.values()))[1])
    mbc = groupings[0]
    rows = []
    for library in LIBRARIES:
        for grouping in groupings:
            rows.append([library, grouping, *(f"{share[library, grouping, how]:.0%}" for how in MERGES)])
    print("Cluster adapters at k = n/3 (three of three): share of the members' own gain kept, by merge")
    print(table(["library", "grouping", *MERGES], rows))

    chosen_rows = []
    for library in LIBRARIES:
        others = [x for x in LIBRARIES if x != library]
        how = max(MERGES, key=lambda h: min(share[x, mbc, h] for x in others))
        randoms = [share[library, g, how] for g in groupings if g.startswith("random")]
        chosen_rows.append(
            [
                library,
                how,
                f"{share[library, mbc, how]:.0%}",
                f"{share[library, 'the families', how]:.0%}",
                f"{np.mean(randoms):.0%} ({min(randoms):.0%}-{max(randoms):.0%})",
                f"{share[library, mbc, HUB]:.0%}",
            ]
        )
    print("\nThe merge chosen leave-one-library-out (best worst retention of MBC's clusters on the other two)")
    print(
        table(
            ["library", "merge chosen on the others", "MBC's clusters", "families", "random: mean (range)",
             "MBC's clusters, the hub's average"],
            chosen_rows,
        )
    )  # fmt: skip
    alike = "least alike (outputs, for compression)"
    bound_rows = []
    for library, (ends, _, _, triples) in measured.items():
        names = list(ends["own"])
        row = [library]
        for how in BOUND:
            every = [
                retention({n: a for g in gs for n, a in triples[frozenset(names[i] for i in g), how].items()}, ends)
                for gs in three_of_three(len(names))
            ]
            row += [f"{max(every):.0%}", f"{np.median(every):.0%}", f"{share[library, alike, how]:.0%}"]
        others = [x for x in LIBRARIES if x != library]
        how = max(MERGES, key=lambda h: min(share[x, alike, h] for x in others))
        bound_rows.append([*row, f"{share[library, alike, how]:.0%} ({how})"])
    print("\nEvery partition into three of three (280), each cluster measured: the best, chosen knowing the answers")
    heads = [f"{what}, {how}" for how in BOUND for what in ("best", "median", "least alike")]
    print(table(["library", *heads, "least alike, merge chosen on the others"], bound_rows))
    labels_rows = [
        [library, g, " ".join(map(str, labels))]
        for library, (_, gs, _, _) in measured.items()
        for g, labels in gs.items()
    ]
    print("\nThe groupings (labels in bench.libraries' order: three families of three)")
    print(table(["library", "grouping", "labels"], labels_rows))
    ends_rows = [
        [library, n, f"{ends['base'][n]:.2f}", f"{ends['own'][n]:.2f}"]
        for library, (ends, _, _, _) in measured.items()
        for n in ends["own"]
    ]
    print("\nBase and own adapter per task (exact match, 20 held-out inputs)")
    print(table(["library", "task", "base", "own"], ends_rows))


if __name__ == "__main__":
    main()
