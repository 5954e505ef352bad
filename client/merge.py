"""Merging adapters into a torch model's weights, and restoring them bitwise.

W + sum_i w_i s_i B_i A_i is ONE GEMM per module with B_cat = [w_1 s_1 B_1 | ... | w_K s_K B_K]
(out x sum r) and A_cat = [A_1; ...; A_K] (sum r x in): addmm(W, B_cat, A_cat) in fp32; in bf16/fp16
on a CPU the same product in fp32, a block of rows at a time (see add_product). No dense delta is
ever formed and each weight is rounded once.

The result is written into a buffer that becomes the layer's weight, and the original tensor is kept
aside: the same memory traffic as an in-place update (read W, write W once), no copy to save the
original, and unmerging swaps the original back, bitwise and without copying. Buffers are reused by
the next merge (fresh memory costs page faults); unmerge(model, free=True) releases them. Unmerging copies back the
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
    if _state(model)["saved"]:
        raise ValueError("the model already has merged adapters: unmerge(model) first")
    plan: dict[str, tuple[nn.Module, list[tuple[Adapter, float]]]] = {}
    for adapter, w in zip(adapters, weights, strict=True):
        for module in adapter.factors:
            layer = target_layer(model, module, adapter)
            plan.setdefault(module, (layer, []))[1].append((adapter, w))

    state = _state(model)
    for module, (layer, members) in plan.items():
        original = layer.weight.data
        buffer = state["spare"].pop(module, None)
        if buffer is None or buffer.shape != original.shape or buffer.dtype != original.dtype:
            buffer = torch.empty_like(original)
        A = torch.cat([a.factors[module].A.float() for a, _ in members], dim=0)
        B = torch.cat([a.factors[module].B.float() * (w * a.factors[module].scaling) for a, w in members], dim=1)
        if type(layer).__name__ == "Conv1D":  # weight is in x out: add (B A)^T = A^T B^T
            A, B = B.T, A.T
        add_product(original, B, A, out=buffer)
        layer.weight.data = buffer
        state["saved"][module] = original


BLOCK_ROWS = 512


def add_product(weight: torch.Tensor, B: torch.Tensor, A: torch.Tensor, out: torch.Tensor) -> None:
    """out = weight + B @ A, each element rounded once; `weight` is left untouched.

    fp32 (and any dtype on a GPU, whose low-precision GEMMs accumulate in fp32): one addmm. bf16 and
    fp16 on a CPU: their GEMMs are slow where the CPU lacks native support (44x slower than fp32 on
    this project's machines), so the product is computed in fp32 a block of rows at a time (a few MB,
    never the whole dense delta) and added: W + (B @ A) exact in fp32, rounded once.
    """
    if weight.dtype == torch.float32 or weight.is_cuda:
        torch.addmm(weight, B.to(weight.dtype), A.to(weight.dtype), out=out)
        return
    for start in range(0, weight.shape[0], BLOCK_ROWS):
        rows = slice(start, start + BLOCK_ROWS)
        torch.add(weight[rows], B[rows] @ A, out=out[rows])


def _state(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Per model: the original weights of merged modules ("saved") and, between merges, the buffers
    that held merged weights ("spare"), reused by the next merge (fresh memory costs page faults)."""
    if _SAVED not in model.__dict__:
        model.__dict__[_SAVED] = {"saved": {}, "spare": {}}
    return model.__dict__[_SAVED]


@torch.no_grad()
def unmerge(model: nn.Module, free: bool = False) -> None:
    """Put back every weight merge() changed: the original tensors themselves, so bit for bit and
    without copying. The merged buffers are kept for the next merge unless `free`."""
    state = _state(model)
    for module, original in state["saved"].items():
        layer = model.get_submodule(module)
        state["spare"][module] = layer.weight.data
        layer.weight.data = original
    state["saved"].clear()
    if free:
        state["spare"].clear()


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
