"""A LoRA adapter in memory: its PEFT config and its factors per module (registry.lora.algebra's format)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from quiver_hub.registry.lora import algebra, peft_format


@dataclass
class Adapter:
    """Factors per Linear / Conv1D module (A: r x in, B: out x r, scaling with PEFT's rank/alpha patterns
    and rslora), and what else the adapter does to the base model (registry.lora.peft_format.Loaded):
    `embeddings`, LoRA on embeddings (in the same form: delta = s B A, vocab x dim); `saved`, parameters
    that replace the base's (modules_to_save, classifier heads, saved biases and embeddings); `tokens`,
    embedding rows that trainable tokens replace."""

    name: str
    config: dict[str, Any]
    factors: dict[str, algebra.Factors]
    origin: tuple[str, str] | None = None  # ("ns/name", revision) when pulled into a Quiver cache
    embeddings: dict[str, algebra.Factors] = field(default_factory=dict)
    saved: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: dict[str, tuple[list[int], torch.Tensor]] = field(default_factory=dict)

    @property
    def dora(self) -> bool:
        """A DoRA adapter (use_dora): its magnitude vectors rescale each merged weight."""
        return bool(self.config.get("use_dora"))

    def beyond_factors(self) -> list[str]:
        """What this adapter does besides adding s B A to Linear weights (DoRA, saved parameters...)."""
        return peft_format.Loaded(self.factors, self.embeddings, self.saved, self.tokens).beyond_factors(self.config)

    def refuse_beyond_factors(self, what: str) -> None:
        """ValueError naming this adapter when it holds more than factors: `what` mixes factors alone."""
        if beyond := self.beyond_factors():
            raise ValueError(peft_format.mixing_refusal(self.name, what, beyond))

    @property
    def fan_in_fan_out(self) -> bool:
        """True for models that store weights in x out (GPT-2's Conv1D): the delta is transposed."""
        return bool(self.config.get("fan_in_fan_out"))

    @classmethod
    def load(cls, folder: str | Path) -> Adapter:
        """Read a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)."""
        folder = Path(folder)
        config_path, weights_path = folder / algebra.CONFIG_FILE, folder / algebra.WEIGHTS_FILE
        if not config_path.is_file() or not weights_path.is_file():
            raise FileNotFoundError(
                f"{folder} is not a PEFT LoRA adapter: it needs {algebra.CONFIG_FILE} and {algebra.WEIGHTS_FILE}"
            )
        config = json.loads(config_path.read_text())
        if config.get("peft_type") != "LORA":
            raise ValueError(f"{folder}: peft_type is {config.get('peft_type')!r}, not a LoRA adapter")
        with safe_open(weights_path, "pt") as f:
            keys = list(f.keys())
        if problems := peft_format.unsupported(config, keys) + peft_format.unmergeable(config):
            raise ValueError(f"{folder}: {peft_format.refusal(problems)}")
        origin = None
        parts = folder.resolve().parts
        if len(parts) >= 4 and parts[-4] == "adapters" and len(parts[-1]) == 40:  # <cache>/adapters/ns/name/rev
            origin = (f"{parts[-3]}/{parts[-2]}", parts[-1])
        name = origin[0] if origin else folder.name
        loaded = peft_format.read(weights_path, config)
        return cls(name, config, loaded.factors, origin, loaded.embeddings, loaded.saved, loaded.tokens)

    def to(self, device: str | torch.device) -> Adapter:
        """This adapter with its tensors on `device` (merges and Arrow take factors from anywhere; on a
        GPU model, factors already there save a copy each time)."""
        return Adapter(
            self.name,
            self.config,
            {m: f.to(device) for m, f in self.factors.items()},
            self.origin,
            {m: f.to(device) for m, f in self.embeddings.items()},
            {p: t.to(device) for p, t in self.saved.items()},
            {m: (rows, t.to(device)) for m, (rows, t) in self.tokens.items()},
        )


def as_adapters(adapters: Adapter | str | Path | Sequence[Adapter | str | Path]) -> list[Adapter]:
    """Adapter objects or PEFT adapter folders -> Adapter objects."""
    if isinstance(adapters, Adapter | str | Path):
        adapters = [adapters]
    return [a if isinstance(a, Adapter) else Adapter.load(a) for a in adapters]


def target_layer(layers: dict[str, nn.Module], module: str, adapter: Adapter, embedding: bool = False) -> nn.Module:
    """The Linear (or transformers Conv1D; with `embedding`, the Embedding) an adapter module names, checked
    against its factors. `layers`: the model's dict(named_modules()), built once for all the modules of all
    the adapters."""
    layer = layers.get(module)
    if layer is None:
        raise ValueError(f"adapter {adapter.name!r} adapts {module!r}, which the model does not have")
    conv1d = type(layer).__name__ == "Conv1D"
    if embedding and not isinstance(layer, nn.Embedding):
        raise ValueError(f"adapter {adapter.name!r} has an embedding LoRA for {module}, a {type(layer).__name__}")
    if not embedding and not (isinstance(layer, nn.Linear) or conv1d):
        raise ValueError(f"{module} is a {type(layer).__name__}; only Linear and Conv1D layers can be merged")
    f = (adapter.embeddings if embedding else adapter.factors)[module]
    out_features, in_features = layer.weight.shape[::-1] if conv1d else layer.weight.shape
    if f.A.shape[1] != in_features or f.B.shape[0] != out_features:
        raise ValueError(
            f"adapter {adapter.name!r}: {module} is {in_features} -> {out_features} in the model but "
            f"{f.A.shape[1]} -> {f.B.shape[0]} in the adapter"
        )
    if not embedding and conv1d != adapter.fan_in_fan_out:
        raise ValueError(
            f"adapter {adapter.name!r} says fan_in_fan_out={adapter.fan_in_fan_out}, but {module} is a "
            f"{type(layer).__name__}"
        )
    return layer
