"""Merging K rank-16 adapters into a 16-layer model (q, k, v, o 1024x1024; gate, up 1024->2816;
down 2816->1024), fp32 and bf16: ours (one fused product per module; restore = pointer swap) vs PEFT
(merge_adapter; sequential merge of 8; add_weighted_adapter("cat") + merge; unmerge) vs the bound
max(bytes of W read and written / in-place bandwidth, FLOPs / GEMM rate), both measured here.

    python -m bench.bench_merge [--device cuda]

On a GPU both sides have their factors there already; "offload" is merge(..., offload=True) (originals
in host memory, restored over PCIe).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from bench.common import DEVICE, best_time, table, timed
from quiver_hub import Adapter, merge, unmerge
from quiver_hub.registry.lora.algebra import algebra

SHAPES = {
    "q_proj": (1024, 1024),
    "k_proj": (1024, 1024),
    "v_proj": (1024, 1024),
    "o_proj": (1024, 1024),
    "gate_proj": (1024, 2816),
    "up_proj": (1024, 2816),
    "down_proj": (2816, 1024),
}  # (in, out)
LAYERS, RANK, REPEAT = 16, 16, 5


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleDict({n: nn.Linear(i, o, bias=False) for n, (i, o) in SHAPES.items()}) for _ in range(LAYERS)
        )


def model(dtype: torch.dtype) -> Model:
    torch.manual_seed(0)
    return Model().to(DEVICE, dtype).eval()


def adapters(k: int) -> list[Adapter]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(k):
        factors = {
            f"layers.{layer}.{n}": algebra.Factors(
                torch.randn(RANK, fi, generator=g) * 0.01, torch.randn(fo, RANK, generator=g) * 0.01, 2.0
            )
            for layer in range(LAYERS)
            for n, (fi, fo) in SHAPES.items()
        }
        out.append(Adapter(f"a{i}", {"r": RANK, "lora_alpha": 2 * RANK}, factors).to(DEVICE))
    return out


def peft_model(dtype: torch.dtype, adapters: list[Adapter]):  # noqa: ANN201
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=list(SHAPES), init_lora_weights=False)
    pm = get_peft_model(model(dtype), config, adapter_name=adapters[0].name)
    for a in adapters[1:]:
        pm.add_adapter(a.name, config)
    with torch.no_grad():
        for name, mod in pm.named_modules():
            if hasattr(mod, "lora_A") and adapters[0].name in mod.lora_A:
                key = name.removeprefix("base_model.model.")
                for a in adapters:
                    mod.lora_A[a.name].weight.copy_(a.factors[key].A)
                    mod.lora_B[a.name].weight.copy_(a.factors[key].B)
    return pm


@functools.cache
def bandwidth() -> float:
    """Bytes per second of an in-place fp32 add over as many bytes as the fp32 model's weights (bytes are
    bytes; torch's bf16 add is bound by its conversions, not by memory)."""
    big = torch.zeros(LAYERS * sum(i * o for i, o in SHAPES.values()), device=DEVICE)
    return 2 * big.numel() * 4 / best_time(lambda: big.add_(1), repeat=5)


@functools.cache
def gemm_rate(dtype: torch.dtype, k: int) -> float:
    """FLOP/s of an in-place addmm in `dtype` on one 2816 x 1024 module with rank K x 16, hot in cache."""
    W = torch.zeros(2816, 1024, dtype=dtype, device=DEVICE)
    B = torch.randn(2816, k * RANK).to(DEVICE, dtype)
    A = torch.randn(k * RANK, 1024).to(DEVICE, dtype)
    return 2 * W.numel() * k * RANK / best_time(lambda: W.addmm_(B, A), repeat=20)


def bound(dtype: torch.dtype, k: int) -> float:
    """max(bytes of W read and written / bandwidth(), FLOPs / GEMM rate) for the whole model, measured
    here: the faster of this CPU's fp32 GEMM and its GEMM in the weights' dtype (native bf16 on
    AMX/AVX512-BF16 CPUs, far slower without). Each measured once a run and the best of its repeats (a
    bound is what the hardware was seen to do, and on 2 shared cores medians wander), so rows with the
    same FLOPs share one rate."""
    params = LAYERS * sum(i * o for i, o in SHAPES.values())
    element = torch.tensor([], dtype=dtype).element_size()
    rate = max(gemm_rate(d, k) for d in {torch.float32, dtype})
    return max(2 * params * element / bandwidth(), 2 * params * k * RANK / rate)


def merge_and_restore(model: nn.Module, ads: list[Adapter], offload: bool = False) -> tuple[float, float]:
    """Median seconds of our merge and of our restore, after a warm-up cycle."""
    merge(model, ads, offload=offload)
    unmerge(model)
    merges, restores = [], []
    for _ in range(REPEAT):
        merges.append(timed(lambda: merge(model, ads, offload=offload)))
        restores.append(timed(lambda: unmerge(model)))
    unmerge(model, free=True)
    return sorted(merges)[REPEAT // 2], sorted(restores)[REPEAT // 2]


def rows() -> list[list[str]]:
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        for k in (1, 8):
            ads = adapters(k)
            ours_model = model(dtype)
            t_merge, t_restore = merge_and_restore(ours_model, ads)
            offloaded = merge_and_restore(ours_model, ads, offload=True) if DEVICE.type == "cuda" else None

            pm = peft_model(dtype, ads)
            names = [a.name for a in ads]
            pm.merge_adapter(names)  # warm-up
            pm.unmerge_adapter()
            peft_merges, peft_unmerges = [], []
            for _ in range(REPEAT):
                peft_merges.append(timed(functools.partial(pm.merge_adapter, names)))
                peft_unmerges.append(timed(pm.unmerge_adapter))
            t_peft, t_peft_unmerge = sorted(peft_merges)[REPEAT // 2], sorted(peft_unmerges)[REPEAT // 2]
            if k > 1:
                cats = []
                for _ in range(3):
                    t = timed(
                        functools.partial(pm.add_weighted_adapter, names, [1.0] * k, "cat", combination_type="cat")
                    )
                    cats.append(t + timed(functools.partial(pm.merge_adapter, ["cat"])))
                    pm.unmerge_adapter()
                    pm.delete_adapter("cat")
                t_cat = sorted(cats)[1]
            b = bound(dtype, k)
            label = f"{str(dtype).removeprefix('torch.')} K={k}"
            row = [
                label,
                f"{t_merge:.4f}",
                f"{t_merge / b:.2f}x",
                f"{t_peft:.4f}",
                f"{t_peft / t_merge:.1f}x",
                f"{t_cat:.4f}" if k > 1 else "-",
                f"{t_cat / t_merge:.1f}x" if k > 1 else "-",
                f"{b:.4f}",
                f"{t_restore:.4f}",
                f"{t_peft_unmerge:.4f}",
                f"{t_peft_unmerge / t_restore:.1f}x",
            ]
            if offloaded:
                row += [f"{offloaded[0]:.4f}", f"{offloaded[1]:.4f}"]
            out.append(row)
    return out


def main() -> None:
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"Merge of K rank-{RANK} adapters into a {LAYERS}-layer model ({LAYERS * len(SHAPES)} modules), "
        f"{where}; median of {REPEAT} (cat: 3) in one process"
    )
    headers = [
        "dtype, K",
        "ours (s)",
        "ours / bound",
        "PEFT merge_adapter (s)",
        "PEFT / ours",
        "PEFT cat + merge (s)",
        "cat / ours",
        "bound (s)",
        "ours restore (s)",
        "PEFT unmerge (s)",
        "unmerge / restore",
    ]
    if DEVICE.type == "cuda":
        headers += ["ours offload (s)", "offload restore (s)"]
    print(table(headers, rows()))


if __name__ == "__main__":
    main()
