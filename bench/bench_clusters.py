"""MBC clustering time and memory for 1k, 10k and 100k adapters (each embedding; exact and landmark
rows), and cluster-adapter construction: ours (QR + small SVD from the factors) vs PEFT
add_weighted_adapter(combination_type="svd").

    python -m bench.bench_clusters [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from bench.common import median_time, table
from quiver_hub.registry.clusters.mbc import (
    EXACT_MAX,
    LANDMARKS,
    Aligned,
    Partition,
    cluster,
    params_matrix,
    sketch_matrix,
)
from quiver_hub.registry.lora.algebra import algebra

MODULES = [f"layers.{i}.{p}" for i in range(8) for p in ("q", "v")]  # 16 modules
HIDDEN, RANK, K = 64, 4, 10
PARAMS_MAX = 10_000  # "params" reads every factor of every adapter: measured up to here
AGREEMENT_AT = 10_000  # from here up to EXACT_MAX both ways run, and their agreement is measured


def library(n: int, seed: int = 0) -> Iterator[dict[str, algebra.Factors]]:
    """n adapters around K centres (the clustering has real structure to find), made one at a time."""
    g = torch.Generator().manual_seed(seed)
    centres = [
        {m: (torch.randn(RANK, HIDDEN, generator=g), torch.randn(HIDDEN, RANK, generator=g)) for m in MODULES}
        for _ in range(K)
    ]
    for i in range(n):
        yield {
            m: algebra.Factors(
                a + 0.5 * torch.randn(RANK, HIDDEN, generator=g), b + 0.5 * torch.randn(HIDDEN, RANK, generator=g), 2.0
            )
            for m, (a, b) in centres[i % K].items()
        }


def timed_cluster(X: np.ndarray | Aligned, exact_max: int) -> tuple[Partition, float, float]:
    """The partition, seconds, and peak MiB of memory allocated while clustering (tracemalloc sees numpy's)."""
    tracemalloc.start()
    t = time.perf_counter()
    partition = cluster(X if isinstance(X, Aligned) else X.astype(np.float32), k=K, exact_max=exact_max)
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return partition, seconds, peak


def clustering_rows(sizes: list[int]) -> list[list[str]]:
    from sklearn.metrics import adjusted_rand_score

    rows = []
    for n in sizes:
        # Sketches and output sketches are computed once at publish in the hub; "params" reads every weight.
        outputs, sketches, lib = [], [], []
        t = time.perf_counter()
        for f in library(n):
            outputs.append((MODULES, algebra.output_sketch(f)))
            sketches.append((MODULES, algebra.sketch(f)))
            if n <= PARAMS_MAX:
                lib.append(f)
        print(f"  {n:,} adapters made and sketched in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        truth = np.arange(n) % K
        for method in ("outputs", "sketch", "params"):
            if method == "params" and n > PARAMS_MAX:
                continue
            t = time.perf_counter()
            if method == "outputs":
                X = sketch_matrix(outputs, algebra.output_block())
            elif method == "sketch":
                X = sketch_matrix(sketches)
            else:
                X = params_matrix(lib)
            embed = time.perf_counter() - t
            exact = None
            # The hub's switch: exact up to EXACT_MAX; where both run, the landmark rows are measured too.
            ways = [("exact", n)] if n <= EXACT_MAX else []
            ways += [(f"landmarks ({LANDMARKS:,})", 0)] if n > EXACT_MAX or n >= AGREEMENT_AT else []
            for way, exact_max in ways:
                partition, seconds, peak = timed_cluster(X, exact_max)
                exact = partition.labels if way == "exact" else exact
                agreement = (
                    f"{adjusted_rand_score(exact, partition.labels):.3f}"
                    if exact is not None and way != "exact"
                    else "-"
                )
                rows.append(
                    [
                        f"{n:,}",
                        method,
                        way,
                        f"{X.shape[1]}",
                        f"{embed:.2f}",
                        f"{seconds:.2f}",
                        f"{peak:,.0f}",
                        f"{adjusted_rand_score(truth, partition.labels):.3f}",
                        agreement,
                    ]
                )
                print(f"  {rows[-1]}", file=sys.stderr)
        del outputs, sketches, lib
    return rows


class Stack(nn.Module):
    def __init__(self, d: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleDict({"q": nn.Linear(d, d, bias=False), "v": nn.Linear(d, d, bias=False)}) for _ in range(layers)
        )

    def forward(self, x):  # noqa: ANN001, ANN201
        for layer in self.layers:
            x = layer["v"](layer["q"](x))
        return x


def merge_rows(members: int = 8, d: int = 1024, layers: int = 8, rank: int = 16) -> list[list[str]]:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        Stack(d, layers),
        LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q", "v"], init_lora_weights=False),
        adapter_name="m0",
    )
    for i in range(1, members):
        model.add_adapter(
            f"m{i}", LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q", "v"], init_lora_weights=False)
        )
    names = [f"m{i}" for i in range(members)]
    modules = {name: mod for name, mod in model.named_modules() if hasattr(mod, "lora_A") and "m0" in mod.lora_A}
    for i in range(members):  # init_lora_weights=False gives B a tiny scale; make the deltas comparable
        for mod in modules.values():
            with torch.no_grad():
                mod.lora_B[f"m{i}"].weight.normal_()

    factors = {
        name: [
            algebra.Factors(mod.lora_A[a].weight.detach(), mod.lora_B[a].weight.detach(), mod.scaling[a]) for a in names
        ]
        for name, mod in modules.items()
    }

    def ours() -> dict[str, algebra.Factors]:
        return {name: algebra.truncate(algebra.concat_average(fs), rank) for name, fs in factors.items()}

    def peft_svd() -> None:
        if "svd" in model.peft_config:
            model.delete_adapter("svd")
        model.add_weighted_adapter(names, [1.0 / members] * members, "svd", combination_type="svd", svd_rank=rank)

    t_ours = median_time(ours, repeat=5)
    t_peft = median_time(peft_svd, repeat=3)
    got = ours()
    err_ours, err_peft = [], []
    for name, mod in modules.items():
        exact = sum(f.scaling * f.B.double() @ f.A.double() for f in factors[name]) / members
        u, s, vh = torch.linalg.svd(exact)
        best = u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]
        norm = float(best.norm())
        err_ours.append(float((got[name].B @ got[name].A - best).norm()) / norm)
        peft_delta = mod.get_delta_weight("svd").double()
        err_peft.append(float((peft_delta - best).norm()) / norm)
    shape = f"{members} rank-{rank} adapters, {len(modules)} modules {d}x{d}, target rank {rank}"
    return [
        [shape, "ours: concat + QR + small SVD", f"{t_ours:.3f}", "1.0x", f"{max(err_ours):.1e}"],
        [shape, 'PEFT add_weighted_adapter("svd")', f"{t_peft:.3f}", f"{t_peft / t_ours:.0f}x", f"{max(err_peft):.1e}"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    print(
        f"MBC clustering: synthetic adapters around {K} centres, {len(MODULES)} modules {HIDDEN}x{HIDDEN} rank {RANK};"
        f" KMeans k={K}, k-means++, 10 restarts, on the rows of the similarity matrix (exact) or on the"
        f" similarities to {LANDMARKS:,} landmark adapters (past {EXACT_MAX:,} adapters); one run each"
    )
    print(
        table(
            [
                "adapters",
                "embedding",
                "rows",
                "embedding dim",
                "embed (s)",
                "similarity + KMeans (s)",
                "peak MiB",
                "ARI vs planted",
                "ARI vs exact",
            ],
            clustering_rows(sizes),
        )
    )
    print()
    print(
        "Cluster adapter (average of the members' deltas, best rank-r): time (median) and relative Frobenius error "
        "to the best rank-r approximation of the exact average (max over modules)"
    )
    print(table(["members", "method", "time (s)", "vs ours", "error to best rank-r"], merge_rows()))


if __name__ == "__main__":
    main()
