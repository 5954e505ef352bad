"""Arrow routing on a local torch model (Ostapenko et al. 2024), token by token, adapters unmerged.

For each adapted Linear with experts e (prototype v_e, factors A_e, B_e, scaling s_e), per token x:
logit_e = |<x, v_e>| / T, the top k kept and softmaxed (weights w_e, the others 0), and
y = W x + sum_e w_e s_e B_e A_e x. With a prior p_e over the experts (for example Hub.route's scores for
the input), logit_e = |<x, v_e>| / T + log p_e: the same softmax, each expert's odds scaled by p_e (an
expert with p_e = 0 is never chosen). Prototypes come from the hub when the adapter was pulled from one
(the hub computed them exactly at publish), else exactly here with registry.lora.algebra.prototype.

The mixing never gathers weights per token: on a GPU, and on a CPU with few experts (sum of ranks <=
DENSE_RANKS), it is two GEMMs through the concatenated low-rank space, (x A_cat^T * expert weights)
B_cat^T; with many on a CPU, the tokens are grouped by expert and each expert runs one GEMM pair on
just its tokens (on a GPU that loop waits on the device once per expert: at 32 experts on an H100,
10-20x slower than the dense GEMMs).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quiver_hub.local.adapter import Adapter, as_adapters, target_layer
from quiver_hub.registry.lora.algebra import prototype

_STATE = "_quiver_arrow"
DENSE_RANKS = 256


class ArrowRouter:
    """The experts of one module, stacked for routing and mixing."""

    def __init__(
        self,
        experts: list[tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]],
        top_k: int,
        temperature: float,
        dtype: torch.dtype,
        device: torch.device,
        center: torch.Tensor | None = None,
        log_prior: torch.Tensor | None = None,
    ):
        """dtype and device: the layer's weight's; the experts move there, wherever they were loaded.
        center: subtracted from each token before its logits (the module's mean input over ordinary text).
        log_prior: added to each expert's logit (-inf: never chosen)."""
        self.top_k, self.temperature = min(top_k, len(experts)), temperature
        self.center = center.to(device, torch.float32) if center is not None else None
        self.log_prior = log_prior.to(device, torch.float32) if log_prior is not None else None
        self.P = torch.stack([p.to(device, torch.float32) for _, _, _, p in experts])  # E x in, routing in fp32
        self.ranks = [a.shape[0] for a, _, _, _ in experts]
        # Mixing runs in the layer's dtype on a GPU, in fp32 on a CPU (bf16/fp16 GEMMs are slow on most CPUs).
        self.dtype = dtype if device.type != "cpu" else torch.float32
        self.A = torch.cat([a.to(device, torch.float32) for a, _, _, _ in experts]).to(self.dtype)  # sum r x in
        self.B = torch.cat([b.to(device, torch.float32) * s for _, b, s, _ in experts], dim=1).to(self.dtype)
        ranks = torch.tensor(self.ranks, device=device)
        self.expert_of_rank = torch.repeat_interleave(torch.arange(len(experts), device=device), ranks)
        self.offsets = [0, *torch.cumsum(torch.tensor(self.ranks), 0).tolist()]
        self.dense = device.type != "cpu" or self.A.shape[0] <= DENSE_RANKS

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Routing weights, tokens x E (zero outside each token's top k)."""
        x = x.float() - self.center if self.center is not None else x.float()
        logits = (x @ self.P.T).abs_() / self.temperature
        if self.log_prior is not None:
            logits += self.log_prior
        top, idx = logits.topk(self.top_k, dim=1)
        return torch.zeros_like(logits).scatter_(1, idx, torch.softmax(top, dim=1))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1]).to(self.dtype)
        w = self.weights(tokens).to(self.dtype)
        if self.dense:
            z = tokens @ self.A.T  # tokens x sum r
            z *= w[:, self.expert_of_rank]
            out = z @ self.B.T
        else:
            out = tokens.new_zeros(tokens.shape[0], self.B.shape[0])
            for e in range(len(self.ranks)):
                rows = w[:, e].nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                lo, hi = self.offsets[e], self.offsets[e + 1]
                z = tokens.index_select(0, rows) @ self.A[lo:hi].T
                z *= w.index_select(0, rows)[:, e : e + 1]
                out.index_add_(0, rows, z @ self.B[:, lo:hi].T)
        return out.reshape(*x.shape[:-1], out.shape[-1]).to(x.dtype)


def apply_arrow(
    model: nn.Module,
    adapters: Adapter | str | Path | Sequence[Adapter | str | Path],
    top_k: int = 3,
    temperature: float = 1.0,
    prototypes: Sequence[dict[str, torch.Tensor] | None] | None = None,
    hub: Any = None,
    center: dict[str, torch.Tensor] | None = None,
    prior: Sequence[float] | None = None,
) -> None:
    """Route every token of every adapted Linear over the adapters (experts), unmerged.

    Prototypes: `prototypes` (one dict per adapter, module -> unit vector, or None for one to compute), for
    example `hub.prototypes_for(adapters)`, the hub's for adapters pulled from it (computed exactly at
    publish); else computed exactly here from the factors (`hub=` is deprecated: pass its prototypes).
    `center` (module -> vector; quiver_hub.local.capture.reference_means(model, tokenizer, modules)) is
    subtracted from each token before routing it: "arrow-centered", which the real-library benchmark
    measured better than the paper's plain routing. `prior` (one weight >= 0 per
    adapter, e.g. `[hit["score"] for hit in hub.route(...)]` for the adapters of that answer) scales each
    expert's odds for every token: token-level mixing that leans on what the whole input was routed to;
    on the real library it keeps 93% of the right adapter's gain, against 49% without (bench/README.md).
    remove_arrow(model) puts the model back.
    """
    adapters = as_adapters(adapters)
    for adapter in adapters:
        adapter.refuse_beyond_factors("token-level mixing (Arrow)")
    if prototypes is None and hub is not None:
        warnings.warn(
            "apply_arrow(hub=...) is deprecated: pass prototypes=hub.prototypes_for(adapters)",
            DeprecationWarning,
            stacklevel=2,
        )
        prototypes = hub.prototypes_for(adapters)
    if not adapters:
        raise ValueError("apply_arrow needs at least one adapter")
    if not (top_k >= 1 and temperature > 0):
        raise ValueError("top_k must be >= 1 and temperature > 0")
    if getattr(model, _STATE, None):
        raise ValueError("Arrow is already applied to this model: remove_arrow(model) first")
    if prior is not None and (
        len(prior) != len(adapters) or not all(p >= 0 for p in prior) or not any(p > 0 for p in prior)
    ):
        raise ValueError("prior needs one weight >= 0 per adapter, at least one of them above 0")
    given = list(prototypes) if prototypes is not None else [None] * len(adapters)
    per_module: dict[str, tuple[nn.Module, list]] = {}
    named = dict(model.named_modules())
    owners: dict[str, list[int]] = {}  # per module, the adapters (by position) of its experts
    for i, (adapter, protos) in enumerate(zip(adapters, given, strict=True)):
        if prior is not None and prior[i] == 0:
            continue  # never chosen
        for module, f in adapter.factors.items():
            layer = target_layer(named, module, adapter)  # a Linear, or GPT-2's Conv1D: PEFT's LoRA reads
            # x through A and B the same way on both (fan_in_fan_out only transposes a merged delta)
            v = protos[module] if protos and module in protos else prototype(f.A, f.B)[0]
            per_module.setdefault(module, (layer, []))[1].append((f.A, f.B, f.scaling, v))
            owners.setdefault(module, []).append(i)
    handles = []
    for module, (layer, experts) in per_module.items():
        mean = center.get(module) if center is not None else None
        log_prior = torch.tensor([prior[i] for i in owners[module]]).log() if prior is not None else None
        router = ArrowRouter(experts, top_k, temperature, layer.weight.dtype, layer.weight.device, mean, log_prior)
        handles.append(layer.register_forward_hook(lambda _m, args, out, r=router: out + r.delta(args[0])))
    setattr(model, _STATE, handles)


def remove_arrow(model: nn.Module) -> None:
    for handle in getattr(model, _STATE, None) or []:
        handle.remove()
    if hasattr(model, _STATE):
        delattr(model, _STATE)
