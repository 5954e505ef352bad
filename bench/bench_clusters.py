"""MBC clustering time for 1k and 10k adapters (both embeddings), and cluster-adapter construction:
ours (QR + small SVD from the factors) vs PEFT add_weighted_adapter(combination_type="svd").

    python bench/bench_clusters.py [--sizes 1000,10000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import median_time, table  # noqa: E402
from quiver_hub.registry import lora  # noqa: E402
from quiver_hub.registry.mbc import cluster, params_matrix, sketch_matrix  # noqa: E402

MODULES = [f"layers.{i}.{p}" for i in range(8) for p in ("q", "v")]  # 16 modules
HIDDEN, RANK, K = 64, 4, 10


def library(n: int, seed: int = 0) -> list[dict[str, lora.Factors]]:
    """n adapters around K centres (the clustering has real structure to find)."""
    g = torch.Generator().manual_seed(seed)
    centres = [
        {m: (torch.randn(RANK, HIDDEN, generator=g), torch.randn(HIDDEN, RANK, generator=g)) for m in MODULES}
        for _ in range(K)
    ]
    out = []
    for i in range(n):
        c = centres[i % K]
        out.append(
            {
                m: lora.Factors(
                    a + 0.5 * torch.randn(RANK, HIDDEN, generator=g),
                    b + 0.5 * torch.randn(HIDDEN, RANK, generator=g),
                    2.0,
                )
                for m, (a, b) in c.items()
            }
        )
    return out


def clustering_rows(sizes: list[int]) -> list[list[str]]:
    rows = []
    for n in sizes:
        lib = library(n)
        sketches = [(MODULES, lora.sketch(f)) for f in lib]  # computed once at publish in the hub
        truth = np.arange(n) % K
        for method in ("sketch", "params"):
            t = time.perf_counter()
            X = sketch_matrix(sketches) if method == "sketch" else params_matrix(lib)
            embed = time.perf_counter() - t
            t = time.perf_counter()
            partition = cluster(X.astype(np.float32), k=K)
            kmeans = time.perf_counter() - t
            from sklearn.metrics import adjusted_rand_score

            ari = adjusted_rand_score(truth, partition.labels)
            rows.append(
                [
                    f"{n:,}",
                    method,
                    f"{X.shape[1]}",
                    f"{embed:.2f}",
                    f"{kmeans:.2f}",
                    f"{embed + kmeans:.2f}",
                    f"{ari:.3f}",
                ]
            )
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
            lora.Factors(mod.lora_A[a].weight.detach(), mod.lora_B[a].weight.detach(), mod.scaling[a]) for a in names
        ]
        for name, mod in modules.items()
    }

    def ours() -> dict[str, lora.Factors]:
        return {name: lora.truncate(lora.concat_average(fs), rank) for name, fs in factors.items()}

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
    parser.add_argument("--sizes", default="1000,10000")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    print(
        f"MBC clustering: synthetic adapters around {K} centres, {len(MODULES)} modules {HIDDEN}x{HIDDEN} rank {RANK};"
        f" KMeans k={K}, k-means++, 10 restarts, on the rows of the similarity matrix (one run each)"
    )
    print(
        table(
            [
                "adapters",
                "method",
                "embedding dim",
                "embed (s)",
                "similarity + KMeans (s)",
                "total (s)",
                "ARI vs planted",
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
