"""Every setting and tensor PEFT writes into a LoRA adapter, accounted for: applied exactly, or refused with
a message that names it. Nothing is dropped: an adapter with anything Quiver cannot apply as PEFT does is
refused whole, by the hub's validation and by the client's Adapter.load alike (both read it here).

Shared by the hub and the thin client, like registry.lora: imports nothing of quiver_hub but that.

Three answers for a LoRA adapter's parts:
- applied: the factors lora_A / lora_B of each module (and with use_dora its magnitude vector), r and
  lora_alpha with rank_pattern / alpha_pattern and use_rslora, fan_in_fan_out, and the settings that
  only choose modules (target_modules, layers_to_transform, layers_pattern, exclude_modules); settings
  that matter only while training or for initialisation, and descriptive metadata, change nothing a
  merge computes;
- stored but not merged (`unmergeable`): what PEFT itself refuses to merge, such as activated LoRA
  (alora_invocation_tokens): the hub keeps it for download, the client refuses to merge or mix it with
  PEFT's reason;
- refused (`unsupported`): every other tensor (saved modules and classifier heads, LoRA on embeddings,
  biases, trainable token deltas) and every setting that changes the computation (lora_bias,
  target_parameters, layer_replication, ...), and any setting Quiver does not know that is set to
  something other than its default.

DoRA is merged exactly; what cannot take its magnitudes refuses it by name (`dora_refusal`): weighted
merges, Arrow's token-level mixing, few-shot composition and cluster adapters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from quiver_hub.registry.lora import magnitude_module, split_key

# Settings whose effect Quiver applies (registry.lora), or that choose which modules carry factors (the
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
    "use_dora",  # DoRA: its magnitude vectors rescale each merged weight's rows (registry.lora.Factors)
}
# Settings that change nothing a merge computes: metadata, training-time and initialisation-time choices,
# and options that matter only with another setting refused below (bias: see TENSORS).
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
    "bias",  # which biases were trained and saved: any saved bias is a tensor, refused below
    "modules_to_save",  # likewise: the saved modules are tensors
    "trainable_token_indices",  # likewise: the token deltas
}
# Settings PEFT would apply in a way Quiver does not (yet): refused whenever set.
CHANGES_THE_MODEL = {
    "lora_bias": "lora_bias: a bias on lora_B",
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
# Tensors other than the factors, by the part of the key that says what they are.
TENSORS = (
    (".lora_magnitude_vector", "DoRA magnitude vectors of an adapter whose config does not say use_dora"),
    (".lora_embedding_A", "LoRA on an embedding"),
    (".lora_embedding_B", "LoRA on an embedding"),
    (".lora_B.bias", "lora_bias (a bias on lora_B)"),
    (".lora_A.bias", "a bias on lora_A"),
    ("trainable_tokens", "trainable token deltas (trainable_token_indices)"),
    ("modules_to_save", "a saved module (modules_to_save)"),
)


def is_set(value: Any) -> bool:
    """Whether a setting holds anything other than a default (None, False, "", [], {}, 0)."""
    return value not in (None, False, "", 0) and value != [] and value != {}


def tensor_kind(key: str) -> str:
    """What a tensor that is not a factor is, for the message that refuses it."""
    for marker, kind in TENSORS:
        if marker in key:
            return kind
    if key.endswith((".weight", ".bias")) and ".lora_" not in key:
        return "a saved module or bias (modules_to_save, bias, save_embedding_layers, a classifier head)"
    return "a tensor Quiver does not know"


def unsupported(config: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """Everything in this adapter that Quiver cannot apply as PEFT does, each named; empty when none."""
    problems = []
    for setting, value in sorted(config.items()):
        if setting in CHANGES_THE_MODEL and is_set(value):
            problems.append(f"{CHANGES_THE_MODEL[setting]} (adapter_config.json: {setting})")
        elif setting not in APPLIED | NO_EFFECT | CHANGES_THE_MODEL.keys() | PEFT_REFUSES_TO_MERGE.keys() and is_set(
            value
        ):
            problems.append(f"adapter_config.json: {setting} = {str(value)[:80]!r}, a setting Quiver does not know")
    if config.get("bias", "none") not in ("none", "all", "lora_only", None):
        problems.append(f"adapter_config.json: bias = {config.get('bias')!r}")
    other: dict[str, list[str]] = {}
    dora = bool(config.get("use_dora"))
    for key in keys:
        if split_key(key) is None and not (dora and magnitude_module(key) is not None):
            other.setdefault(tensor_kind(key), []).append(key)
    for kind, found in sorted(other.items()):
        shown = ", ".join(sorted(found)[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        problems.append(f"{kind}: {shown}")
    return problems


def unmergeable(config: Mapping[str, Any]) -> list[str]:
    """Why PEFT itself refuses to merge this adapter (nothing when it merges)."""
    return [reason for setting, reason in sorted(PEFT_REFUSES_TO_MERGE.items()) if is_set(config.get(setting))]


def refusal(problems: list[str]) -> str:
    """One message for everything refused."""
    return "Quiver cannot apply this adapter as PEFT does, and refuses it rather than apply part of it: " + "; ".join(
        problems
    )


def dora_refusal(name: str, what: str) -> str:
    """Why a DoRA adapter cannot take part in `what` (a merge with weights or beside others, Arrow...)."""
    return (
        f"{name} is a DoRA adapter (use_dora): {what} is not defined for it, since its magnitudes rescale the "
        "whole merged weight; merge it alone, with weight 1, as PEFT's merge_and_unload does"
    )
