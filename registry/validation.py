"""What makes an upload a PEFT LoRA adapter Quiver accepts (README.md, "What an adapter is here").

Works on files already staged on disk; reads the safetensors header only, never the tensors.
Every rejection is an InvalidAdapter whose message says what to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quiver_hub.registry import lora
from quiver_hub.registry.errors import InvalidAdapter
from quiver_hub.registry.names import check_file_path
from quiver_hub.registry.safetensors_header import read_header

README_FILE = "README.md"
EXAMPLES_FILE = "examples.jsonl"
ALLOWED_FILES = (lora.CONFIG_FILE, lora.WEIGHTS_FILE, README_FILE, EXAMPLES_FILE)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True)
class AdapterSummary:
    """What a version records about its adapter, read off the config and the header."""

    config: dict[str, Any]
    base_model: str
    rank: int
    alpha: float
    target_modules: list[str]  # the module paths that carry factors, sorted
    num_parameters: int


def validate_adapter(files: dict[str, Path]) -> AdapterSummary:
    """Check an adapter folder given as {path inside the folder: staged file on disk}."""
    for path in files:
        check_file_path(path)
        if path.lower().endswith(PICKLE_SUFFIXES):
            raise InvalidAdapter(
                f"{path}: pickle files are refused because loading them runs code; "
                "save the adapter with safetensors (PEFT's save_pretrained does by default)"
            )
        if path not in ALLOWED_FILES:
            raise InvalidAdapter(f"{path}: unexpected file; an adapter holds only {', '.join(ALLOWED_FILES)}")
    for required in (lora.CONFIG_FILE, lora.WEIGHTS_FILE):
        if required not in files:
            raise InvalidAdapter(f"{required} is missing; upload the folder written by PEFT's save_pretrained")

    config = read_config(files[lora.CONFIG_FILE])
    weights = files[lora.WEIGHTS_FILE]
    with weights.open("rb") as f:
        tensors, _ = read_header(f, weights.stat().st_size, lora.WEIGHTS_FILE)
    modules = check_factors(config, tensors)
    if EXAMPLES_FILE in files:
        read_examples(files[EXAMPLES_FILE])
    if README_FILE in files:
        try:
            files[README_FILE].read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InvalidAdapter(f"{README_FILE}: the model card must be UTF-8 text") from None

    return AdapterSummary(
        config=config,
        base_model=config["base_model_name_or_path"],
        rank=int(config["r"]),
        alpha=float(config["lora_alpha"]),
        target_modules=sorted(modules),
        num_parameters=sum(t.numel for t in tensors.values()),
    )


def read_config(path: Path) -> dict[str, Any]:
    name = lora.CONFIG_FILE
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InvalidAdapter(f"{name}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidAdapter(f"{name}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{name}: must be a JSON object")
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise InvalidAdapter(f'{name}: peft_type is {peft_type!r}; only LoRA adapters ("LORA") are accepted')
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise InvalidAdapter(f"{name}: r must be a positive integer, got {r!r}")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise InvalidAdapter(f"{name}: lora_alpha must be a number, got {alpha!r}")
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base.strip():
        raise InvalidAdapter(f"{name}: base_model_name_or_path must name the base model")
    targets = config.get("target_modules")
    if not (isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        raise InvalidAdapter(f"{name}: target_modules must be a list of module names or a regex string")
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(key) or {}
        if not isinstance(pattern, dict) or not all(isinstance(v, int | float) for v in pattern.values()):
            raise InvalidAdapter(f"{name}: {key} must map module patterns to numbers")
    if any(not isinstance(v, int) or v < 1 for v in (config.get("rank_pattern") or {}).values()):
        raise InvalidAdapter(f"{name}: rank_pattern values must be positive integers")
    if config.get("use_dora"):
        raise InvalidAdapter(f"{name}: DoRA adapters (use_dora) are not supported, only plain LoRA")
    return config


def check_factors(config: dict[str, Any], tensors: dict) -> set[str]:
    """Every tensor is a lora_A/lora_B weight of a targeted module, in pairs, shapes agreeing with r."""
    name = lora.WEIGHTS_FILE
    if not tensors:
        raise InvalidAdapter(f"{name}: holds no tensors")
    factors: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, info in tensors.items():
        parsed = lora.split_key(key)
        if parsed is None:
            raise InvalidAdapter(
                f"{name}: unexpected tensor {key!r}; only base_model.model.<module>.lora_A.weight "
                "and .lora_B.weight are accepted (no biases, embeddings or modules_to_save)"
            )
        module, side = parsed
        factors.setdefault(module, {})[side] = info.shape
    for module in sorted(factors):
        pair = factors[module]
        for side in ("A", "B"):
            if side not in pair:
                raise InvalidAdapter(f"{name}: lora_{side} missing for {module}")
        a, b = pair["A"], pair["B"]
        if len(a) != 2 or len(b) != 2:
            raise InvalidAdapter(f"{name}: {module}: lora_A and lora_B must be matrices, got {a} and {b}")
        r = lora.module_rank(config, module)
        if a[0] != r or b[1] != r:
            raise InvalidAdapter(
                f"{name}: {module}: lora_A is {a[0]}x{a[1]} and lora_B is {b[0]}x{b[1]}, "
                f"but the config says rank {r} (lora_A must be r x in, lora_B out x r)"
            )
        if not lora.targets_module(config.get("target_modules"), module):
            raise InvalidAdapter(
                f"{name}: {module} has factors but is not selected by target_modules {config.get('target_modules')!r}"
            )
    return set(factors)


def read_examples(path: Path) -> list[str]:
    """examples.jsonl: one JSON value a line, a string or an object with a string "input" (or "text")."""
    out: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InvalidAdapter(f"{EXAMPLES_FILE}: must be UTF-8 text") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidAdapter(f"{EXAMPLES_FILE}: line {number} is not valid JSON ({e})") from None
        if isinstance(value, dict):
            value = value.get("input", value.get("text"))
        if not isinstance(value, str):
            raise InvalidAdapter(f'{EXAMPLES_FILE}: line {number} must be a string or an object with a string "input"')
        out.append(value)
    return out
