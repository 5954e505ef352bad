"""Merging adapters into a torch model's weights, and restoring them bitwise.

W + sum_i w_i s_i B_i A_i is ONE fused product per module with B_cat = [w_1 s_1 B_1 | ... | w_K s_K B_K]
(out x sum r) and A_cat = [A_1; ...; A_K] (sum r x in): out = W + B_cat A_cat, each weight rounded
once, no dense delta ever formed. On a CPU that is the one-pass kernel of client/local/fused.py (W read
once, the product added from registers) unless torch's own GEMM is faster (see add_products);
on a GPU, torch's GEMM (in fp32 for bf16/fp16 weights, whose GPU addmm rounds more than once).

The result is written into a buffer that becomes the layer's weight, and the original tensor is kept
aside: the same memory traffic as an in-place update (read W, write W once), no copy to save the
original, and unmerging swaps the original back, bitwise and without copying. Buffers are reused by
the next merge (fresh memory costs page faults); unmerge(model, free=True) releases them. Every
product is computed before any layer changes, so a failure half-way leaves the model as it was.

A model on a GPU may have no room for both copies: merge(..., offload=True) copies the originals to
pinned host memory and merges in place; unmerge copies them back, and a failure half-way puts back
the modules already merged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from quiver_hub.local import fused as fused_kernel
from quiver_hub.local.adapter import Adapter, as_adapters, target_layer
from quiver_hub.registry.lora import algebra, peft_format

_SAVED = "_quiver_saved_weights"


@torch.no_grad()
def merge(
    model: nn.Module,
    adapters: Adapter | str | Path | Sequence[Adapter | str | Path],
    weights: Sequence[float] | None = None,
    *,
    offload: bool = False,
) -> None:
    """Add sum_i weights[i] * delta_i to the model's weights in place (weights default to 1), and what else
    the adapters do as PEFT's merge_and_unload does it: lora_B biases added to the layers' biases, LoRA on
    embeddings, saved parameters (modules_to_save, classifier heads, biases, embeddings) and trainable
    token rows put in place of the base's.

    Several adapters merge as PEFT's add_weighted_adapter allows: two adapters may not save the same
    parameter nor the same token row, and an adapter that replaces parameters merges with weight 1 (a
    fraction of a replaced module is not defined); a DoRA adapter merges alone.

    Everything is checked before anything changes: a module the model lacks, a shape mismatch, or a
    model already merged is a ValueError and leaves the model as it was.

    offload: for weights on a GPU, keep the originals in pinned host memory and merge in place, so the
    merge takes no GPU memory beyond the factors of a few modules; unmerge then copies them back (over
    PCIe: slower than the swap, still bitwise). Without it a merged model holds both copies on the GPU
    (replaced parameters always do). Weights on a CPU ignore it.
    """
    adapters = as_adapters(adapters)
    weights = [1.0] * len(adapters) if weights is None else list(weights)
    if len(weights) != len(adapters):
        raise ValueError(f"{len(weights)} weights for {len(adapters)} adapters")
    state = _state(model)
    if state["saved"] or state["params"]:
        raise ValueError("the model already has merged adapters: unmerge(model) first")
    named = dict(model.named_modules())
    plan: dict[str, tuple[nn.Module, list[tuple[Adapter, algebra.Factors, float]]]] = {}
    for adapter, w in zip(adapters, weights, strict=True):
        if adapter.dora and (len(adapters) > 1 or w != 1):
            what = "a weighted merge, or a merge beside other adapters,"
            raise ValueError(peft_format.mixing_refusal(adapter.name, what, ["DoRA magnitudes (use_dora)"]))
        for embedding, factors in ((False, adapter.factors), (True, adapter.embeddings)):
            for module, f in factors.items():
                layer = target_layer(named, module, adapter, embedding)
                plan.setdefault(module, (layer, []))[1].append((adapter, f, w))
    replace, untied = replacements(model, named, adapters, weights)

    jobs, kept = [], {}  # kept: module -> where its original is kept until the merge is done
    changing = False  # no weight changes before add_products (in place, with offload)
    try:
        for module, (layer, members) in plan.items():
            original = layer.weight.data
            source = replace.pop(f"{module}.weight", original)  # a saved embedding, under its LoRA
            in_place = offload and original.device.type != "cpu"
            kept[module] = _buffer(state, module, original, host=in_place)
            if in_place:
                kept[module].copy_(original)
            terms = []
            for _, f, w in members:
                B, A = (f.A.T, f.B.T) if type(layer).__name__ == "Conv1D" else (f.B, f.A)  # Conv1D: W is in x out
                terms.append((B, A, w * f.scaling))
            jobs.append((source, terms, original if in_place else kept[module]))
        changing = True
        add_products(jobs)
        for (layer, members), (_, _, merged_weight) in zip(plan.values(), jobs, strict=True):
            adapter, f, _ = members[0]  # a DoRA adapter is merged alone (above)
            if adapter.dora:
                rescale_rows(merged_weight, f.magnitude, type(layer).__name__ == "Conv1D")
    except BaseException as e:
        for module, buffer in kept.items():
            if changing and buffer.device != plan[module][0].weight.device:  # in place: put the original back
                plan[module][0].weight.data.copy_(buffer)
            if not isinstance(e, torch.OutOfMemoryError):  # out of GPU memory: hold none of it
                state["spare"][module] = buffer
        raise
    for module, (layer, _) in plan.items():
        if kept[module].device == layer.weight.device:  # not offloaded: swap the merged buffer in
            layer.weight.data, kept[module] = kept[module], layer.weight.data
        state["saved"][module] = kept[module]
    for name, value in replace.items():
        parameter = model.get_parameter(name)
        state["params"][name] = (parameter, parameter.data)
        if name in untied:  # a module PEFT saved a copy of (modules_to_save): its own parameter, tied or not
            module, _, attr = name.rpartition(".")
            model.get_submodule(module)._parameters[attr] = nn.Parameter(value, parameter.requires_grad)
        else:  # a parameter tied to others changes with them, as PEFT loads it
            parameter.data = value


def replacements(
    model: nn.Module, named: dict[str, nn.Module], adapters: Sequence[Adapter], weights: Sequence[float]
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The new value of every parameter the adapters set whole, computed without changing the model: saved
    parameters, then lora_B biases added (in fp32, rounded once) to the layers' biases, then token rows;
    and the saved modules' parameters, which PEFT keeps apart from any they were tied to (a saved lm_head
    of a model whose lm_head shares the embedding's weight changes the lm_head alone).
    ValueError, naming it, for what PEFT would not merge or what the model cannot take."""
    parameters = dict(model.named_parameters(remove_duplicate=False))
    replace: dict[str, torch.Tensor] = {}
    untied = set()
    owner: dict[str, str] = {}  # parameter (or parameter:row) -> the adapter that sets it

    def claim(name: str, adapter: Adapter) -> None:
        if name in owner:
            raise ValueError(
                f"{owner[name]} and {adapter.name} both replace {name}: PEFT's add_weighted_adapter refuses "
                "adapters that save the same module, and so does Quiver; merge one of them"
            )
        owner[name] = adapter.name

    for adapter, w in zip(adapters, weights, strict=True):
        changed = {}  # PEFT saves an embedding under its LoRA whole: when it is the model's own, it changes nothing
        for name, value in adapter.saved.items():
            parameter = parameters.get(name)
            if parameter is None:
                raise ValueError(f"adapter {adapter.name!r} saves {name}, which the model does not have")
            if parameter.shape != value.shape:
                raise ValueError(
                    f"adapter {adapter.name!r} saves {name} as {list(value.shape)}, but the model's is "
                    f"{list(parameter.shape)} (a head for another number of labels?)"
                )
            value = value.to(parameter.device, parameter.dtype, copy=True)
            if not torch.equal(value, parameter.data):
                changed[name] = value
        if (changed or adapter.tokens) and w != 1:
            names = ", ".join(sorted(changed | adapter.tokens))
            raise ValueError(
                f"{adapter.name} replaces parameters of the model ({names}): a merge with weight {w} is not "
                "defined for them; merge it with weight 1"
            )
        for name, value in changed.items():
            claim(name, adapter)
            replace[name] = value
            if peft_format.saved_reason(adapter.config, name, set()) == "modules_to_save":
                untied.add(name)
    for module in sorted({m for a in adapters for m, f in a.factors.items() if f.bias is not None}):
        bias = getattr(named[module], "bias", None)
        if bias is None:  # PEFT's own refusal
            raise ValueError(
                f"{module}: impossible to merge LoRA with lora_bias=True because the base layer has no bias (PEFT)"
            )
        total = replace.get(f"{module}.bias", bias.data).float()
        for adapter, w in zip(adapters, weights, strict=True):
            if (f := adapter.factors.get(module)) is not None and f.bias is not None:
                total = total + f.bias.to(total.device, torch.float32) * (w * f.scaling)
        replace[f"{module}.bias"] = total.to(bias.dtype)
    for adapter in adapters:
        for module, (rows, delta) in adapter.tokens.items():
            layer = named.get(module)
            if not isinstance(layer, nn.Embedding | nn.Linear) or delta.shape[1:] != layer.weight.shape[1:]:
                raise ValueError(f"adapter {adapter.name!r} sets token rows of {module}, not an embedding of the model")
            if max(rows, default=-1) >= layer.weight.shape[0]:
                raise ValueError(
                    f"adapter {adapter.name!r} sets token {max(rows)} of {module}, of {layer.weight.shape[0]} rows"
                )
            for row in rows:
                claim(f"{module}.weight row {row}", adapter)
            name = f"{module}.weight"
            base = replace.get(name, layer.weight.data)
            index = torch.tensor(rows, device=base.device)
            replace[name] = base.index_copy(0, index, delta.to(base.device, base.dtype))
    return replace, untied


def rescale_rows(merged: torch.Tensor, magnitude: torch.Tensor, conv1d: bool) -> None:
    """DoRA's merge, in place: W' = m / ||W + delta|| * (W + delta), the norm of each output's row (a
    column of a Conv1D weight, stored in x out), as PEFT's merge_and_unload computes it."""
    norm = torch.linalg.norm(merged.float(), dim=0 if conv1d else 1)
    factor = magnitude.to(merged.device, torch.float32) / norm
    merged.copy_((merged.float() * (factor[None, :] if conv1d else factor[:, None])).to(merged.dtype))


def _buffer(state: dict[str, dict[str, torch.Tensor]], module: str, like: torch.Tensor, host: bool) -> torch.Tensor:
    """A buffer shaped like `like`: on its device, or in pinned host memory (`host`); the last merge's
    when it fits (fresh memory costs page faults, and pinning is slow)."""
    device = torch.device("cpu") if host else like.device
    buffer = state["spare"].pop(module, None)
    if buffer is not None and (buffer.shape, buffer.dtype, buffer.device) == (like.shape, like.dtype, device):
        return buffer
    try:
        return torch.empty(like.shape, dtype=like.dtype, device=device, pin_memory=host and like.is_cuda)
    except torch.OutOfMemoryError as e:
        raise torch.OutOfMemoryError(
            f"{e}\nA merge keeps the original weights beside the merged ones; merge(..., offload=True) keeps "
            "them in host memory instead"
        ) from e


# From this total rank on, a CPU with native low-precision GEMMs (AMX, AVX512-BF16) computes the product
# faster with torch's GEMM than the one-pass kernel does with fp32 FMAs (merging into the bench/bench_merge.py
# model in bf16 on an AMX CPU: ranks 32 and 48 faster in the kernel, 64 even, 96 faster in the GEMM).
NATIVE_GEMM_MIN_RANK = 64


def native_gemm(dtype: torch.dtype) -> bool:
    """Whether this CPU runs GEMMs in `dtype` natively (fp32 always; bf16 and fp16 where the CPU has the
    instructions, else torch's kernels for them are many times slower than fp32's)."""
    probes = {
        torch.float32: [],
        torch.bfloat16: ["_is_avx512_bf16_supported", "_is_amx_tile_supported"],
        torch.float16: ["_is_amx_fp16_supported"],
    }.get(dtype)
    if probes is None:
        return False
    return not probes or any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def add_products(jobs: Sequence[fused_kernel.Job]) -> None:
    """out = weight + sum_t s_t B_t A_t for every (weight, terms, out), each element rounded once; the
    weights are left untouched.

    On a CPU the one-pass kernel (client/local/fused.py) takes every job it can, in one call, reading the
    adapters' factors where they lie; but where the CPU has a native GEMM for a low-precision dtype
    and the total rank is large, torch's GEMM is faster. Those jobs, and all jobs on a GPU or without
    the kernel, concatenate their terms (CONCAT_CHUNK modules at a time) for add_product.
    """
    fused: list[fused_kernel.Job] = []
    rest: list[fused_kernel.Job] = []
    for job in jobs:
        weight, terms, _ = job
        _, _, rank = fused_kernel.term_shape(terms)
        big = rank >= NATIVE_GEMM_MIN_RANK and weight.dtype != torch.float32 and native_gemm(weight.dtype)
        fits = weight.device.type == "cpu" and weight.is_contiguous() and fused_kernel.supports(weight.dtype)
        (fused if fits and not big else rest).append(job)
    if fused:
        fused_kernel.add_products(fused)
    for start in range(0, len(rest), CONCAT_CHUNK):
        chunk = rest[start : start + CONCAT_CHUNK]
        factors = concatenated([(terms, product_dtype(weight), weight.device) for weight, terms, _ in chunk])
        for (weight, _, out), (B, A) in zip(chunk, factors, strict=True):
            add_product(weight, B, A, out)


# Modules whose concatenated factors are built in one go (and held together): few kernel calls, and
# torch's threads and the kernel's do not take turns spinning on the same cores.
CONCAT_CHUNK = 32
BLOCK_ROWS = 512


def product_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype torch computes a merge's product in: the weight's own where that GEMM is native and
    rounds once (fp32; bf16/fp16 on a CPU with the instructions), else fp32. Not bf16/fp16 on a GPU:
    cuBLAS's addmm in them was seen off by more than half a unit (an H100, torch 2.11)."""
    if weight.dtype == torch.float32 or (weight.device.type == "cpu" and native_gemm(weight.dtype)):
        return weight.dtype
    return torch.float32


def add_product(weight: torch.Tensor, B: torch.Tensor, A: torch.Tensor, out: torch.Tensor) -> None:
    """out = weight + B @ A with torch alone, each element rounded once; `weight` is left untouched
    unless it is `out` (merged in place).

    B and A in product_dtype(weight). In the weight's dtype: one addmm (these GEMMs accumulate in fp32
    and add W before rounding). In fp32 for a bf16/fp16 weight (whose GEMMs are slow on most CPUs, 44x
    slower than fp32 on an AVX2 CPU, and on a GPU off by more than half a unit): the fp32 product,
    added and rounded once; on a CPU a block of rows at a time (a few MB, never the whole dense delta).
    """
    if B.dtype == weight.dtype:
        if out is weight:  # merged in place (offload)
            weight.addmm_(B, A)
        else:
            torch.addmm(weight, B, A, out=out)
        return
    block = BLOCK_ROWS if weight.device.type == "cpu" else weight.shape[0]
    for start in range(0, weight.shape[0], block):
        rows = slice(start, start + block)
        torch.add(weight[rows], B[rows] @ A, out=out[rows])


def concatenated(
    items: Sequence[tuple[Sequence[fused_kernel.Term], torch.dtype, torch.device]],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each (terms, dtype, device): B_cat = [s_1 B_1 | ... | s_K B_K] and A_cat = [A_1; ...; A_K] in
    `dtype` on `device` (the weight's, wherever the adapters were loaded), s_t B_t computed in fp32 and
    rounded once. On a CPU the kernel builds them all in one pass; torch takes one per term."""
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(items)
    by_kernel = [i for i, (_, dt, device) in enumerate(items) if device.type == "cpu" and fused_kernel.supports(dt)]
    if by_kernel:
        for i, factors in zip(by_kernel, fused_kernel.concatenated([items[i][:2] for i in by_kernel]), strict=True):
            out[i] = factors
    for i, (terms, dtype, device) in enumerate(items):
        if out[i] is not None:
            continue
        m, n, rank = fused_kernel.term_shape(terms)
        B_cat = torch.empty(m, rank, dtype=dtype, device=device)
        A_cat = torch.empty(rank, n, dtype=dtype, device=device)
        start = 0
        for B, A, scale in terms:
            cols = slice(start, start + A.shape[0])
            torch.mul(B.to(device, torch.float32), scale, out=B_cat[:, cols])
            A_cat[cols].copy_(A)
            start = cols.stop
        out[i] = (B_cat, A_cat)
    return out


def _state(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Per model: the original weights of merged modules ("saved"), the original data of parameters an
    adapter replaced ("params", by name) and, between merges, the buffers that held merged weights
    ("spare"), reused by the next merge (fresh memory costs page faults)."""
    if _SAVED not in model.__dict__:
        model.__dict__[_SAVED] = {"saved": {}, "spare": {}, "params": {}}
    return model.__dict__[_SAVED]


@torch.no_grad()
def unmerge(model: nn.Module, free: bool = False) -> None:
    """Put back every weight merge() changed, bit for bit: the original tensors themselves, without
    copying (after merge(..., offload=True), copied back from host memory). The merged buffers are kept
    for the next merge unless `free`."""
    state = _state(model)
    named = dict(model.named_modules()) if state["saved"] else {}
    for module, original in state["saved"].items():
        layer = named[module]
        if original.device == layer.weight.device:
            state["spare"][module] = layer.weight.data
            layer.weight.data = original
        else:  # offloaded: merged in place, the original copied back from host memory
            layer.weight.data.copy_(original)
            state["spare"][module] = original
    state["saved"].clear()
    for name, (parameter, data) in reversed(state["params"].items()):  # reversed: a tied parameter set twice
        module, _, attr = name.rpartition(".")
        model.get_submodule(module)._parameters[attr] = parameter
        parameter.data = data
    state["params"].clear()
    if free:
        state["spare"].clear()


@contextmanager
def merged(
    model: nn.Module,
    adapters: Adapter | str | Path | Sequence[Adapter | str | Path],
    weights: Sequence[float] | None = None,
    *,
    offload: bool = False,
) -> Iterator[nn.Module]:
    """`with merged(model, adapters, weights):` the model with the adapters merged, restored on exit."""
    merge(model, adapters, weights, offload=offload)
    try:
        yield model
    finally:
        unmerge(model)
