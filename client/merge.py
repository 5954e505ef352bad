"""Merging adapters into a torch model's weights, and restoring them bitwise.

W += sum_i w_i s_i B_i A_i is ONE GEMM per module with B_cat = [w_1 s_1 B_1 | ... | w_K s_K B_K]
(out x sum r) and A_cat = [A_1; ...; A_K] (sum r x in): W.addmm_(B_cat, A_cat) in fp32; in bf16/fp16
on a CPU the same product in fp32, a block of rows at a time, added in place (see add_product). No
dense delta is ever formed and each weight is rounded once. Unmerging copies back the
weights saved before the merge: subtracting a delta cannot give the original back in low precision.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from client.adapter import Adapter, as_adapters, target_layer

_SAVED = "_quiver_saved_weights"


@torch.no_grad()
def merge(
    model: nn.Module,
    adapters: Adapter | str | Path | Sequence[Adapter | str | Path],
    weights: Sequence[float] | None = None,
) -> None:
    """Add sum_i weights[i] * delta_i to the model's weights in place (weights default to 1).

    Everything is checked before anything changes: a module the model lacks, a shape mismatch, or a
    model already merged is a ValueError and leaves the model as it was.
    """
    adapters = as_adapters(adapters)
    weights = [1.0] * len(adapters) if weights is None else list(weights)
    if len(weights) != len(adapters):
        raise ValueError(f"{len(weights)} weights for {len(adapters)} adapters")
    if getattr(model, _SAVED, None):
        raise ValueError("the model already has merged adapters: unmerge(model) first")
    plan: dict[str, tuple[nn.Module, list[tuple[Adapter, float]]]] = {}
    for adapter, w in zip(adapters, weights, strict=True):
        for module in adapter.factors:
            layer = target_layer(model, module, adapter)
            plan.setdefault(module, (layer, []))[1].append((adapter, w))

    saved: dict[str, torch.Tensor] = {}
    for module, (layer, members) in plan.items():
        weight = layer.weight
        saved[module] = weight.detach().clone()
        A = torch.cat([a.factors[module].A.float() for a, _ in members], dim=0)
        B = torch.cat([a.factors[module].B.float() * (w * a.factors[module].scaling) for a, w in members], dim=1)
        if type(layer).__name__ == "Conv1D":  # weight is in x out: add (B A)^T = A^T B^T
            A, B = B.T, A.T
        add_product(weight, B, A)
    setattr(model, _SAVED, saved)


BLOCK_ROWS = 512


def add_product(weight: torch.Tensor, B: torch.Tensor, A: torch.Tensor) -> None:
    """weight += B @ A in place, rounding each weight once.

    fp32 (and any dtype on a GPU, whose low-precision GEMMs accumulate in fp32): one addmm_. bf16 and
    fp16 on a CPU: their GEMMs are slow where the CPU lacks native support (44x slower than fp32 on
    this project's machines), so the product is computed in fp32, a block of rows at a time (a few MB,
    never the whole dense delta), and added in place: W + (B @ A) exact in fp32, rounded once.
    """
    if weight.dtype == torch.float32 or weight.is_cuda:
        weight.addmm_(B.to(weight.dtype), A.to(weight.dtype))
        return
    for start in range(0, weight.shape[0], BLOCK_ROWS):
        rows = slice(start, start + BLOCK_ROWS)
        weight[rows].add_(B[rows] @ A)


@torch.no_grad()
def unmerge(model: nn.Module) -> None:
    """Put back, bit for bit, every weight merge() changed."""
    saved: dict[str, torch.Tensor] = getattr(model, _SAVED, None) or {}
    for module, original in saved.items():
        model.get_submodule(module).weight.copy_(original)
    if hasattr(model, _SAVED):
        delattr(model, _SAVED)


@contextmanager
def merged(
    model: nn.Module,
    adapters: Adapter | str | Path | Sequence[Adapter | str | Path],
    weights: Sequence[float] | None = None,
) -> Iterator[nn.Module]:
    """`with merged(model, adapters, weights):` the model with the adapters merged, restored on exit."""
    merge(model, adapters, weights)
    try:
        yield model
    finally:
        unmerge(model)
