"""Merging adapters into a torch model's weights, and restoring them bitwise.

W += sum_i w_i s_i B_i A_i is ONE in-place GEMM per module: W.addmm_(B_cat, A_cat) with
B_cat = [w_1 s_1 B_1 | ... | w_K s_K B_K] (out x sum r) and A_cat = [A_1; ...; A_K] (sum r x in),
so no dense delta is ever formed and, in bf16/fp16, the sum is rounded once. Unmerging copies back the
weights saved before the merge: subtracting a delta cannot give the original back in low precision.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from client.adapter import Adapter

_SAVED = "_quiver_saved_weights"


def _as_adapters(adapters: Adapter | str | Path | Sequence[Adapter | str | Path]) -> list[Adapter]:
    if isinstance(adapters, Adapter | str | Path):
        adapters = [adapters]
    return [a if isinstance(a, Adapter) else Adapter.load(a) for a in adapters]


def _target(model: nn.Module, module: str, adapter: Adapter) -> nn.Module:
    """The Linear (or transformers Conv1D) an adapter module names, checked against its factors."""
    try:
        layer = model.get_submodule(module)
    except AttributeError:
        raise ValueError(f"adapter {adapter.name!r} adapts {module!r}, which the model does not have") from None
    conv1d = type(layer).__name__ == "Conv1D"
    if not (isinstance(layer, nn.Linear) or conv1d):
        raise ValueError(f"{module} is a {type(layer).__name__}; only Linear and Conv1D layers can be merged")
    f = adapter.factors[module]
    out_features, in_features = layer.weight.shape[::-1] if conv1d else layer.weight.shape
    if f.A.shape[1] != in_features or f.B.shape[0] != out_features:
        raise ValueError(
            f"adapter {adapter.name!r}: {module} is {in_features} -> {out_features} in the model but "
            f"{f.A.shape[1]} -> {f.B.shape[0]} in the adapter"
        )
    if conv1d != adapter.fan_in_fan_out:
        raise ValueError(
            f"adapter {adapter.name!r} says fan_in_fan_out={adapter.fan_in_fan_out}, but {module} is a "
            f"{type(layer).__name__}"
        )
    return layer


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
    adapters = _as_adapters(adapters)
    weights = [1.0] * len(adapters) if weights is None else list(weights)
    if len(weights) != len(adapters):
        raise ValueError(f"{len(weights)} weights for {len(adapters)} adapters")
    if getattr(model, _SAVED, None):
        raise ValueError("the model already has merged adapters: unmerge(model) first")
    plan: dict[str, tuple[nn.Module, list[tuple[Adapter, float]]]] = {}
    for adapter, w in zip(adapters, weights, strict=True):
        for module in adapter.factors:
            layer = _target(model, module, adapter)
            plan.setdefault(module, (layer, []))[1].append((adapter, w))

    saved: dict[str, torch.Tensor] = {}
    for module, (layer, members) in plan.items():
        weight = layer.weight
        saved[module] = weight.detach().clone()
        A = torch.cat([a.factors[module].A for a, _ in members], dim=0).to(weight.dtype)
        B = torch.cat([a.factors[module].B * (w * a.factors[module].scaling) for a, w in members], dim=1)
        B = B.to(weight.dtype)
        if type(layer).__name__ == "Conv1D":  # weight is in x out: add (B A)^T = A^T B^T
            weight.addmm_(A.T, B.T)
        else:
            weight.addmm_(B, A)
    setattr(model, _SAVED, saved)


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
