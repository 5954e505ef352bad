"""Arrow prototypes of a Llama-7B-shaped rank-16 adapter (32 layers x 7 modules):
ours (QR + r x r SVD) vs PEFT's 15 power iterations vs a dense SVD of each delta.

    python -m bench.bench_prototypes
"""

from __future__ import annotations

import time
import types

import torch
from peft.tuners.lora.arrow import ArrowLoraLinearLayer

from bench.common import median_time, table
from quiver_hub.registry.lora.algebra import prototype

SHAPES = {  # module: (in, out)
    "q_proj": (4096, 4096),
    "k_proj": (4096, 4096),
    "v_proj": (4096, 4096),
    "o_proj": (4096, 4096),
    "gate_proj": (4096, 11008),
    "up_proj": (4096, 11008),
    "down_proj": (11008, 4096),
}
LAYERS, RANK = 32, 16


def adapter(seed: int = 0, decay: float = 1.0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Gaussian factors; with decay < 1, B's j-th column is scaled by decay**j (a decaying spectrum,
    as trained adapters tend to have, which separates the top two singular values)."""
    g = torch.Generator().manual_seed(seed)
    scale = decay ** torch.arange(RANK, dtype=torch.float32)
    return {
        f"model.layers.{i}.{name}": (
            torch.randn(RANK, d_in, generator=g) / d_in**0.5,
            torch.randn(d_out, RANK, generator=g) / RANK**0.5 * scale,
        )
        for i in range(LAYERS)
        for name, (d_in, d_out) in SHAPES.items()
    }


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    factors = adapter()
    peft_self = types.SimpleNamespace(rng_seed=0)

    def ours():
        return {m: prototype(a, b)[0] for m, (a, b) in factors.items()}

    def peft_power(library: dict = factors) -> dict:
        power = ArrowLoraLinearLayer.top_right_singular_vec_from_BA
        return {m: power(peft_self, a, b) for m, (a, b) in library.items()}

    t_ours = median_time(ours, repeat=5)
    t_peft = median_time(peft_power, repeat=5)
    exact, approx = ours(), peft_power()
    cos = torch.tensor([abs(float(exact[m].double() @ approx[m].double())) for m in factors])
    decaying = adapter(decay=0.7)
    exact_d, approx_d = {m: prototype(a, b)[0] for m, (a, b) in decaying.items()}, peft_power(decaying)
    cos_d = torch.tensor([abs(float(exact_d[m].double() @ approx_d[m].double())) for m in decaying])

    # Dense SVD of B @ A: one module of each shape (it takes seconds each), extrapolated to all 224.
    t_dense, dense_cos = 0.0, []
    for name in ("q_proj", "gate_proj", "down_proj"):
        module = f"model.layers.0.{name}"
        a, b = factors[module]
        t = time.perf_counter()
        vh = torch.linalg.svd(b @ a, full_matrices=False)[2]
        per_module = time.perf_counter() - t
        count = sum(1 for n, s in SHAPES.items() if s == SHAPES[name]) * LAYERS
        t_dense += per_module * count
        dense_cos.append(abs(float(vh[0].double() @ exact[module].double())))

    n = len(factors)
    print(
        f"Arrow prototypes, Llama-7B-shaped rank-{RANK} adapter: {n} modules, {torch.get_num_threads()} threads, "
        f"fp32 factors; median of 5 runs"
    )
    print(
        table(
            ["method", "time (s)", "per module (ms)", "vs ours", "|cos| to exact: min", "median"],
            [
                [
                    "ours: QR + r x r SVD (float64)",
                    f"{t_ours:.3f}",
                    f"{1e3 * t_ours / n:.2f}",
                    "1.0x",
                    "1 (exact)",
                    "1",
                ],
                [
                    "PEFT Arrow: 15 power iterations",
                    f"{t_peft:.3f}",
                    f"{1e3 * t_peft / n:.2f}",
                    f"{t_peft / t_ours:.1f}x",
                    f"{cos.min():.6f}",
                    f"{cos.median():.6f}",
                ],
                [
                    "  same, factors with a decaying spectrum (B column j scaled by 0.7^j)",
                    "-",
                    "-",
                    "-",
                    f"{cos_d.min():.6f}",
                    f"{cos_d.median():.6f}",
                ],
                [
                    "dense SVD of B @ A (fp32, extrapolated from 1 module per shape)",
                    f"{t_dense:.0f}",
                    f"{1e3 * t_dense / n:.0f}",
                    f"{t_dense / t_ours:.0f}x",
                    f"{min(dense_cos):.6f}",
                    "-",
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
