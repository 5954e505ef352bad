"""The PEFT LoRA format and the low-rank algebra.

Imports only the standard library, torch, safetensors and numpy: the thin client imports it too.

PEFT shapes: A is r x in, B is out x r, scaling s = alpha / r (alpha / sqrt(r) with rslora),
with per-module overrides from rank_pattern / alpha_pattern; delta dW = s * B @ A.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

KEY_PREFIX = "base_model.model."
A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def split_key(key: str) -> tuple[str, str] | None:
    """`base_model.model.<module>.lora_A.weight` -> (module, "A"); None for any other key."""
    if not key.startswith(KEY_PREFIX):
        return None
    for suffix, side in ((A_SUFFIX, "A"), (B_SUFFIX, "B")):
        if key.endswith(suffix):
            module = key[len(KEY_PREFIX) : -len(suffix)]
            return (module, side) if module else None
    return None


def factor_key(module: str, side: str) -> str:
    return f"{KEY_PREFIX}{module}{A_SUFFIX if side == 'A' else B_SUFFIX}"


def pattern_value(patterns: Mapping[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches a dotted suffix."""
    for key in patterns or {}:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def module_rank(config: Mapping[str, Any], module: str) -> int:
    return int(pattern_value(config.get("rank_pattern"), module, config["r"]))


def module_alpha(config: Mapping[str, Any], module: str) -> float:
    return float(pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"]))


def module_scaling(config: Mapping[str, Any], module: str) -> float:
    r, alpha = module_rank(config, module), module_alpha(config, module)
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def targets_module(target_modules: str | Iterable[str] | None, module: str) -> bool:
    """Does PEFT's target_modules select this module path? (list: exact name or dotted suffix;
    string: a regex that must match the whole path; "all-linear": any module.)"""
    if target_modules is None:
        return False
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            return True
        return re.fullmatch(target_modules, module) is not None
    return any(module == t or module.endswith("." + t) for t in target_modules)
