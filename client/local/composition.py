"""Few-shot composition: given a handful of (input, output) examples of a new task, the weights w over
library adapters that make sum_i w_i s_i B_i A_i fit them (LoraHub, Huang et al. 2023; the "supervised
adaptation" of Ostapenko et al. 2024), published as one ordinary PEFT adapter.

method "gradient" (the default): the adapters run unmerged, as low-rank branches beside each adapted
layer (y = W x + sum_i w_i s_i B_i A_i x, the factors frozen), so the loss is differentiable in w and Adam
fits w on the examples' answer tokens, with an L1 penalty on w. The result is the exact weighted sum of
deltas.

method "lorahub" (for comparison): LoraHub's recipe: a gradient-free search of w (nevergrad's NGOpt,
budget 40, L1 penalty 0.05, w in [-1.5, 1.5]) over an adapter whose A and B are each the w-weighted sum of
the members' (A = sum_i w_i A_i, B = sum_i w_i B_i), which adds cross terms B_i A_j no choice of w
removes. Needs `pip install nevergrad`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quiver_hub.local.adapter import Adapter, as_adapters, target_layer
from quiver_hub.registry.lora import algebra

Example = tuple[str, str]
LORAHUB_BUDGET = 40  # LoraHub's own default number of evaluations


@dataclass
class Composition:
    """What compose() found: a weight per adapter, and how the loss went."""

    adapters: list[Adapter]
    weights: list[float]
    losses: list[float]
    method: str
    seconds: float
    combine: str = "deltas"  # "deltas": sum_i w_i s_i B_i A_i; "factors": LoraHub's sum of A and B apart
    scalings: list[float] = field(default_factory=list)

    def factors(self, rank: int | None = None) -> dict[str, algebra.Factors]:
        """The composed adapter's factors per module (concatenated, or rank-`rank` compressed)."""
        if self.combine == "factors":
            return lorahub_factors(self.adapters, self.weights)
        return algebra.weighted_sum([a.factors for a in self.adapters], self.weights, rank)

    def lineage(self) -> list[dict[str, Any]]:
        return [
            {"adapter": a.name, **({"revision": a.origin[1]} if a.origin else {}), "weight": w}
            for a, w in zip(self.adapters, self.weights, strict=True)
        ]

    def save(self, folder: str | Path, base_model: str, rank: int | None = None) -> Path:
        """Write the composition as a PEFT adapter folder (PeftModel.from_pretrained loads it)."""
        import json

        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fan = any(a.fan_in_fan_out for a in self.adapters)
        config, tensors = algebra.adapter_files(self.factors(rank), base_model, fan, "CAUSAL_LM")
        (folder / algebra.CONFIG_FILE).write_text(json.dumps(config, indent=2))
        save_file(tensors, str(folder / algebra.WEIGHTS_FILE))
        return folder


class Branches:
    """The adapters as unmerged low-rank branches on a model, mixed by one weight per adapter."""

    def __init__(self, model: nn.Module, adapters: list[Adapter], weights: torch.Tensor):
        self.weights = weights
        named = dict(model.named_modules())
        per_module: dict[str, list[tuple[int, algebra.Factors]]] = {}
        for i, adapter in enumerate(adapters):
            for module, f in adapter.factors.items():
                target_layer(named, module, adapter)
                per_module.setdefault(module, []).append((i, f))
        self.handles = []
        for module, members in per_module.items():
            layer = named[module]
            device = layer.weight.device
            A = torch.cat([f.A.to(device, torch.float32) for _, f in members])  # sum r x in
            B = torch.cat([f.B.to(device, torch.float32) * f.scaling for _, f in members], dim=1)  # out x sum r
            owner = torch.cat([torch.full((f.A.shape[0],), i, device=device) for i, f in members])
            self.handles.append(layer.register_forward_hook(self.hook(A, B, owner)))

    def hook(self, A: torch.Tensor, B: torch.Tensor, owner: torch.Tensor) -> Callable:
        def add(_module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            x = args[0].to(torch.float32)
            z = (x @ A.T) * self.weights.to(x.device)[owner]
            return out + (z @ B.T).to(out.dtype)

        return add

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def example_batch(tokenizer: Any, examples: Sequence[Example], chat: bool) -> tuple[torch.Tensor, ...]:
    """(input ids, attention mask, labels: the answer tokens only), left-padded."""
    rows = []
    for prompt, answer in examples:
        if chat:
            messages = [{"role": "user", "content": prompt}]
            prefix = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            suffix = answer + (tokenizer.eos_token or "")
        else:
            prefix, suffix = prompt, " " + answer
        p = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        s = tokenizer(suffix, add_special_tokens=False)["input_ids"]
        rows.append((p + s, len(p)))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for i, (row, prefix) in enumerate(rows):
        start = width - len(row)
        ids[i, start:] = torch.tensor(row)
        mask[i, start:] = 1
        labels[i, start + prefix :] = torch.tensor(row[prefix:])
    return ids, mask, labels


def answer_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    ids, mask, labels = (t.to(next(model.parameters()).device) for t in batch)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1))


def compose(
    model: nn.Module,
    tokenizer: Any,
    adapters: Adapter | str | Path | Sequence[Adapter | str | Path],
    examples: Sequence[Example],
    *,
    method: str = "gradient",
    steps: int = 60,
    lr: float = 0.05,
    l1: float = 0.01,
    chat: bool | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> Composition:
    """Weights over `adapters` that fit `examples` ((input, output) pairs; chat-formatted when the
    tokenizer has a chat template, unless `chat` says otherwise). The model is left as it was.

    progress(step, loss) is called after every step; by default the loss is reported on stderr when it
    is a terminal."""
    adapters = as_adapters(adapters)
    for adapter in adapters:
        adapter.refuse_beyond_factors("few-shot composition")
    if progress is None and sys.stderr.isatty():
        progress = report_progress(steps if method == "gradient" else LORAHUB_BUDGET)
    if not adapters or not examples:
        raise ValueError("compose needs at least one adapter and one example")
    chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    batch = example_batch(tokenizer, examples, chat)
    started = time.perf_counter()
    if method == "lorahub":
        weights, losses = lorahub_search(model, adapters, batch, progress)
        combine = "factors"
    elif method == "gradient":
        weights, losses = gradient_fit(model, adapters, batch, steps, lr, l1, progress)
        combine = "deltas"
    else:
        raise ValueError(f"method must be 'gradient' or 'lorahub', got {method!r}")
    return Composition(adapters, weights, losses, method, time.perf_counter() - started, combine)


def report_progress(total: int) -> Callable[[int, float], None]:
    def report(step: int, loss: float) -> None:
        end = "\n" if step + 1 >= total else ""
        print(f"\rcompose: step {step + 1}/{total}, loss {loss:.4f}", end=end, file=sys.stderr, flush=True)

    return report


def gradient_fit(
    model: nn.Module,
    adapters: list[Adapter],
    batch: tuple[torch.Tensor, ...],
    steps: int,
    lr: float,
    l1: float,
    progress: Callable[[int, float], None] | None,
) -> tuple[list[float], list[float]]:
    w = torch.zeros(len(adapters), requires_grad=True)
    optimiser = torch.optim.Adam([w], lr=lr)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    branches = Branches(model, adapters, w)
    losses = []
    try:
        for step in range(steps):
            loss = answer_loss(model, batch)
            losses.append(float(loss))
            (loss + l1 * w.abs().sum()).backward()
            optimiser.step()
            optimiser.zero_grad()
            if progress:
                progress(step, losses[-1])
        with torch.no_grad():
            losses.append(float(answer_loss(model, batch)))
    finally:
        branches.remove()
        for p, needed in frozen:
            p.requires_grad_(needed)
    return [float(x) for x in w.detach()], losses


def lorahub_factors(adapters: list[Adapter], weights: list[float]) -> dict[str, algebra.Factors]:
    """LoraHub's combination: A = sum_i w_i A_i, B = sum_i w_i s_i B_i (all members of one rank)."""
    out = {}
    for module in sorted({m for a in adapters for m in a.factors}):
        present = [(a.factors[module], w) for a, w in zip(adapters, weights, strict=True) if module in a.factors]
        if len({f.A.shape[0] for f, _ in present}) > 1:
            raise ValueError("LoraHub's combination needs adapters of one rank")
        A = sum(w * f.A.double() for f, w in present)
        B = sum(w * f.B.double() * f.scaling for f, w in present)
        out[module] = algebra.Factors(A, B, 1.0)
    return out


def lorahub_search(
    model: nn.Module,
    adapters: list[Adapter],
    batch: tuple[torch.Tensor, ...],
    progress: Callable[[int, float], None] | None,
    budget: int = LORAHUB_BUDGET,
) -> tuple[list[float], list[float]]:
    try:
        import nevergrad as ng
    except ImportError:
        raise ImportError("method='lorahub' needs nevergrad: pip install nevergrad") from None
    from quiver_hub.local.merging import merged

    losses: list[float] = []

    def objective(w: Any) -> float:
        candidate = Adapter("lorahub", {"r": 1}, lorahub_factors(adapters, list(w)))
        with torch.no_grad(), merged(model, candidate):
            loss = float(answer_loss(model, batch))
        losses.append(loss)
        if progress:
            progress(len(losses) - 1, loss)
        return loss + 0.05 * float(sum(abs(x) for x in w))

    parametrization = ng.p.Array(init=[0.0] * len(adapters), lower=-1.5, upper=1.5)
    optimiser = ng.optimizers.NGOpt(parametrization=parametrization, budget=budget)
    best = optimiser.minimize(objective)
    return [float(x) for x in best.value], losses
