"""Every setting and tensor PEFT writes into a LoRA adapter, accounted for: applied exactly, or refused with
a message that names it. Nothing is dropped: an adapter with anything Quiver cannot apply as PEFT does is
refused whole, by the hub's validation and by the client's Adapter.load alike (both read it here).

Shared by the hub and the thin client, like registry.lora.algebra: imports nothing of quiver_hub but that.

Three answers for a LoRA adapter's parts:
- applied (`Parts`, sorted by `sort_keys`): the factors lora_A / lora_B of each Linear or Conv1D module
  (with use_dora its magnitude vector, with lora_bias its lora_B.bias), LoRA on embeddings
  (lora_embedding_A / _B), the parameters an adapter saves whole to replace the base model's
  (modules_to_save and classifier heads, bias="all" / "lora_only", save_embedding_layers), and trainable
  token rows (trainable_token_indices); r and lora_alpha with rank_pattern / alpha_pattern and
  use_rslora, fan_in_fan_out, and the settings that only choose modules (target_modules,
  layers_to_transform, layers_pattern, exclude_modules). Settings that matter only while training or
  for initialisation, and descriptive metadata, change nothing a merge computes;
- stored but not merged (`unmergeable`): what PEFT itself refuses to merge, such as activated LoRA
  (alora_invocation_tokens): the hub keeps it for download, the client refuses to merge or mix it with
  PEFT's reason (so does a merge of lora_bias into a layer without a bias, found only beside the model);
- refused (`unsupported`): every other tensor (a saved tensor the config does not explain, lora_A.bias,
  any lora_ key Quiver does not know) and every setting that changes the computation
  (target_parameters, layer_replication, ...), and any setting Quiver does not know that is set to
  something other than its default.

What is more than plain factors (`beyond_factors`: DoRA's magnitudes, saved parameters, embedding LoRA,
token rows, lora_bias) is merged alone or beside others as PEFT's add_weighted_adapter allows, and
refused by name where it has no meaning: token-level mixing (Arrow), few-shot composition and cluster
adapters (docs/adapters-and-api.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from safetensors.torch import load_file

from quiver_hub.registry.lora.algebra import KEY_PREFIX, Factors, magnitude_module, module_scaling, split_key

# Settings whose effect Quiver applies (client/local/merging.py), or that choose which modules carry factors (the
# factors present in the file are what is applied, checked against target_modules by the hub).
APPLIED = {
    "r",
    "lora_alpha",
    "rank_pattern",
    "alpha_pattern",
    "use_rslora",
    "fan_in_fan_out",
    "target_modules",
    "layers_to_transform",
    "layers_pattern",
    "exclude_modules",
    "base_model_name_or_path",
    "use_dora",  # DoRA: its magnitude vectors rescale each merged weight's rows (registry.lora.algebra.Factors)
    "lora_bias",  # lora_B.bias: added, times the scaling, to the layer's bias
    "bias",  # which biases were trained and saved: the saved biases replace the base's
    "modules_to_save",  # the saved modules' parameters replace the base's
    "trainable_token_indices",  # which rows of an embedding the saved token deltas replace
}
# Settings that change nothing a merge computes: metadata, training-time and initialisation-time choices.
NO_EFFECT = {
    "peft_type",
    "task_type",
    "revision",
    "inference_mode",
    "auto_mapping",
    "peft_version",
    "lora_dropout",
    "init_lora_weights",
    "loftq_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
    "runtime_config",
    "megatron_core",
    "ensure_weight_tying",
    "qalora_group_size",
}
# Settings PEFT would apply in a way Quiver does not (yet): refused whenever set.
CHANGES_THE_MODEL = {
    "target_parameters": "target_parameters: LoRA on parameters rather than on modules",
    "layer_replication": "layer_replication: layers copied into a deeper model",
    "use_qalora": "QA-LoRA (use_qalora)",
    "megatron_config": "megatron_config: Megatron-parallel layers",
    "arrow_config": "arrow_config: an Arrow router, not one adapter",
    "use_bdlora": "use_bdlora",
    "kasa_config": "kasa_config",
    "velora_config": "velora_config",
    "monteclora_config": "monteclora_config",
}
# Settings of adapters PEFT itself refuses to merge: stored by the hub, never merged by the client.
PEFT_REFUSES_TO_MERGE = {
    "alora_invocation_tokens": (
        "activated LoRA (alora_invocation_tokens) acts only after its invocation tokens; PEFT refuses to merge "
        "it, and so does Quiver (load it with PEFT to run it)"
    ),
}
# PEFT's names for the layers save_embedding_layers saves whole (peft.utils.constants.EMBEDDING_LAYER_NAMES).
EMBEDDING_LAYERS = ("embed_tokens", "lm_head")
TOKEN_DELTA_SUFFIX = ".token_adapter.trainable_tokens_delta"
EMBEDDING_SUFFIXES = {".lora_embedding_A": "A", ".lora_embedding_B": "B"}
LORA_BIAS_SUFFIX = ".lora_B.bias"

T = TypeVar("T")


@dataclass
class Parts(Generic[T]):
    """An adapter's tensors (T: their keys, or the tensors) by what each does to the base model."""

    factors: dict[str, dict[str, T]] = field(default_factory=dict)  # module -> {"A", "B", "magnitude"?, "bias"?}
    embeddings: dict[str, dict[str, T]] = field(default_factory=dict)  # module -> {"A": r x vocab, "B": dim x r}
    saved: dict[str, T] = field(default_factory=dict)  # model parameter -> the tensor that replaces it
    tokens: dict[str, tuple[list[int], T]] = field(default_factory=dict)  # embedding -> (rows, their new values)
    unknown: dict[str, list[str]] = field(default_factory=dict)  # why refused -> keys


def is_set(value: Any) -> bool:
    """Whether a setting holds anything other than a default (None, False, "", [], {}, 0)."""
    return value not in (None, False, "", 0) and value != [] and value != {}


def names_module(names: Any, module: str) -> bool:
    """Whether a PEFT list of module names (modules_to_save, trainable_token_indices' keys) names this
    module path: the name itself or a dotted suffix of it."""
    return isinstance(names, list | dict) and any(
        isinstance(n, str) and (module == n or module.endswith("." + n)) for n in names
    )


def token_rows(config: Mapping[str, Any], module: str) -> list[int] | None:
    """The rows of `module` (an embedding) that trainable_token_indices names: a list names the input
    embedding's (the only one a delta is saved for), a dict names them per module; None when it names none."""
    indices = config.get("trainable_token_indices")
    if isinstance(indices, dict):
        indices = next((v for k, v in indices.items() if names_module([k], module)), None)
    if not isinstance(indices, list) or not all(type(i) is int and i >= 0 for i in indices):
        return None
    return indices


def saved_reason(config: Mapping[str, Any], parameter: str, lora_modules: set[str]) -> str | None:
    """Why PEFT saved this whole parameter of the base model (None when nothing in the config says so)."""
    module = parameter.rsplit(".", 1)[0]
    if names_module(config.get("modules_to_save"), module):
        return "modules_to_save"
    if parameter.endswith(".bias") and config.get("bias") == "all":
        return "bias=all"
    if parameter.endswith(".bias") and config.get("bias") == "lora_only" and module in lora_modules:
        return "bias=lora_only"
    if module.rsplit(".", 1)[-1] in EMBEDDING_LAYERS:
        return "save_embedding_layers"
    return None


def sort_keys(config: Mapping[str, Any], keys: Iterable[str]) -> Parts[str]:
    """Every key of adapter_model.safetensors, by what it does; keys nothing explains go to `unknown`."""
    parts: Parts[str] = Parts()
    dora, maybe_saved = bool(config.get("use_dora")), []

    def refuse(why: str, key: str) -> None:
        parts.unknown.setdefault(why, []).append(key)

    for key in keys:
        parsed = split_key(key)
        rest = key[len(KEY_PREFIX) :] if key.startswith(KEY_PREFIX) else None
        if parsed is not None:
            parts.factors.setdefault(parsed[0], {})[parsed[1]] = key
        elif (module := magnitude_module(key)) is not None and dora:
            parts.factors.setdefault(module, {})["magnitude"] = key
        elif module is not None:
            refuse("DoRA magnitude vectors of an adapter whose config does not say use_dora", key)
        elif rest is None:
            refuse(f"a tensor outside {KEY_PREFIX!r}", key)
        elif rest.endswith(LORA_BIAS_SUFFIX) and config.get("lora_bias") is True:
            parts.factors.setdefault(rest[: -len(LORA_BIAS_SUFFIX)], {})["bias"] = key
        elif rest.endswith(LORA_BIAS_SUFFIX):
            refuse("lora_B.bias of an adapter whose config does not say lora_bias", key)
        elif side := next((v for s, v in EMBEDDING_SUFFIXES.items() if rest.endswith(s)), None):
            parts.embeddings.setdefault(rest.rsplit(".", 1)[0], {})[side] = key
        elif rest.endswith(TOKEN_DELTA_SUFFIX):
            module = rest[: -len(TOKEN_DELTA_SUFFIX)]
            if (rows := token_rows(config, module)) is None:
                refuse("trainable token deltas trainable_token_indices does not place", key)
            else:
                parts.tokens[module] = (rows, key)
        elif ".lora_" in rest or "trainable_tokens" in rest or ".modules_to_save." in rest:
            refuse("a tensor Quiver does not know", key)
        else:
            maybe_saved.append((rest.replace(".base_layer.", "."), key))
    lora_modules = set(parts.factors) | set(parts.embeddings)
    for parameter, key in maybe_saved:
        if saved_reason(config, parameter, lora_modules) is None:
            refuse("a saved tensor that no setting explains (modules_to_save, bias, save_embedding_layers)", key)
        else:
            parts.saved[parameter] = key
    return parts


def unsupported(config: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """Everything in this adapter that Quiver cannot apply as PEFT does, each named; empty when none."""
    problems = []
    known = APPLIED | NO_EFFECT | CHANGES_THE_MODEL.keys() | PEFT_REFUSES_TO_MERGE.keys()
    for setting, value in sorted(config.items()):
        if setting in CHANGES_THE_MODEL and is_set(value):
            problems.append(f"{CHANGES_THE_MODEL[setting]} (adapter_config.json: {setting})")
        elif setting not in known and is_set(value):
            problems.append(f"adapter_config.json: {setting} = {str(value)[:80]!r}, a setting Quiver does not know")
    if config.get("bias", "none") not in ("none", "all", "lora_only", None):
        problems.append(f"adapter_config.json: bias = {config.get('bias')!r}")
    if config.get("lora_bias") not in (None, False, True):
        problems.append(f"adapter_config.json: lora_bias = {config.get('lora_bias')!r}")
    parts = sort_keys(config, keys)
    for kind, found in sorted(parts.unknown.items()):
        shown = ", ".join(sorted(found)[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        problems.append(f"{kind}: {shown}")
    for module in sorted(set(parts.tokens) & set(parts.embeddings)):
        problems.append(f"{module}: trainable tokens and a LoRA on the same embedding")
    for kind, pairs in (("lora_", parts.factors), ("lora_embedding_", parts.embeddings)):  # never half a pair
        for module, found in sorted(pairs.items()):
            problems += [f"{kind}{side} missing for {module}" for side in ("A", "B") if side not in found]
    return problems


def unmergeable(config: Mapping[str, Any]) -> list[str]:
    """Why PEFT itself refuses to merge this adapter (nothing when it merges)."""
    return [reason for setting, reason in sorted(PEFT_REFUSES_TO_MERGE.items()) if is_set(config.get(setting))]


def refusal(problems: list[str]) -> str:
    """One message for everything refused."""
    return "Quiver cannot apply this adapter as PEFT does, and refuses it rather than apply part of it: " + "; ".join(
        problems
    )


@dataclass
class Loaded:
    """An adapter's tensors, read: its LoRA factors per Linear / Conv1D module (what routing, Arrow and
    clustering use), and what else it does to the base model."""

    factors: dict[str, Factors]
    embeddings: dict[str, Factors]  # delta = s B A with B = lora_embedding_A^T (vocab x r), A = lora_embedding_B^T
    saved: dict[str, torch.Tensor]
    tokens: dict[str, tuple[list[int], torch.Tensor]]

    def beyond_factors(self, config: Mapping[str, Any]) -> list[str]:
        """What this adapter does besides adding s B A to Linear weights, each named (empty when nothing)."""
        out = ["DoRA magnitudes (use_dora)"] if config.get("use_dora") else []
        if biased := sorted(m for m, f in self.factors.items() if f.bias is not None):
            out.append(f"lora_bias ({biased[0]}{' and more' if len(biased) > 1 else ''})")
        for what, names in (("LoRA on an embedding", self.embeddings), ("saved parameters", self.saved)):
            if names:
                out.append(f"{what} ({', '.join(sorted(names)[:2])}{' and more' if len(names) > 2 else ''})")
        if self.tokens:
            out.append(f"trainable tokens ({', '.join(sorted(self.tokens))})")
        return out


def read(weights_path: str | Path, config: Mapping[str, Any]) -> Loaded:
    """Read adapter_model.safetensors (already accepted by `unsupported`) into its parts, with PEFT's
    per-module scaling."""
    tensors = load_file(str(weights_path))
    parts = sort_keys(config, tensors)
    factors = {
        module: Factors(
            tensors[keys["A"]],
            tensors[keys["B"]],
            module_scaling(config, module),
            tensors.get(keys.get("magnitude", "")),
            tensors.get(keys.get("bias", "")),
        )
        for module, keys in sorted(parts.factors.items())
    }
    embeddings = {
        module: Factors(tensors[keys["B"]].T, tensors[keys["A"]].T, module_scaling(config, module))
        for module, keys in sorted(parts.embeddings.items())
    }
    saved = {parameter: tensors[key] for parameter, key in sorted(parts.saved.items())}
    tokens = {module: (rows, tensors[key]) for module, (rows, key) in sorted(parts.tokens.items())}
    return Loaded(factors, embeddings, saved, tokens)


def mixing_refusal(name: str, what: str, beyond: list[str]) -> str:
    """Why an adapter with more than factors (DoRA, saved parameters...) cannot take part in `what`."""
    return (
        f"{name} has {', '.join(beyond)}: {what} is not defined for them (it mixes or averages LoRA factors "
        "alone); merge it with quiver_hub.merge, as PEFT's merge_and_unload does"
    )
