"""What makes an upload a PEFT LoRA adapter Quiver accepts (docs/adapters-and-api.md).

Works on files already staged on disk; reads the safetensors header only, never the tensors.
Every rejection is an InvalidAdapter whose message says what to fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regex

from quiver_hub.registry.catalogue.files import EXAMPLES_FILE, check_files
from quiver_hub.registry.errors import InvalidAdapter
from quiver_hub.registry.intake.parsing import parse_json
from quiver_hub.registry.intake.safetensors_header import read_header
from quiver_hub.registry.limits import (
    MAX_CONFIG_BYTES,
    MAX_EXAMPLE_CHARS,
    MAX_EXAMPLES,
    MAX_EXAMPLES_BYTES,
    MAX_MODULE_NAME_CHARS,
    MAX_MODULES,
    MAX_PATTERN_CHARS,
    MAX_PATTERNS,
    MAX_RANK,
)
from quiver_hub.registry.lora import algebra, peft_format


@dataclass(frozen=True)
class AdapterSummary:
    """What a version records about its adapter, read off the config and the header."""

    config: dict[str, Any]
    base_model: str
    rank: int
    alpha: float
    target_modules: list[str]  # the module paths that carry factors, sorted
    num_parameters: int
    shapes: dict[str, tuple[int, int]]  # (in_features, out_features) per module


def validate_adapter(files: dict[str, Path]) -> AdapterSummary:
    """Check an upload given as {path inside the folder: staged file on disk}: which files it holds
    (registry.catalogue.files), then the adapter itself."""
    check_files(files)
    config, tensors, modules = check_adapter(files[algebra.CONFIG_FILE], files[algebra.WEIGHTS_FILE])
    for folder in sorted({p.rsplit("/", 1)[0] for p in files if p.endswith("/" + algebra.CONFIG_FILE)}):
        check_named_adapter(files, folder)
    if EXAMPLES_FILE in files:
        read_examples(files[EXAMPLES_FILE])

    return AdapterSummary(
        config=config,
        base_model=config["base_model_name_or_path"],
        rank=int(config["r"]),
        alpha=float(config["lora_alpha"]),
        target_modules=sorted(modules),
        num_parameters=sum(t.numel for t in tensors.values()),
        shapes=factor_shapes(tensors, config),
    )


def check_adapter(config_file: Path, weights: Path) -> tuple[dict[str, Any], dict, set[str]]:
    """One adapter's config, weights header and modules, every part of it accounted for."""
    config = read_config(config_file)
    with weights.open("rb") as f:
        tensors, _ = read_header(f, weights.stat().st_size, algebra.WEIGHTS_FILE)
    if problems := peft_format.unsupported(config, tensors):
        raise InvalidAdapter(peft_format.refusal(problems))
    return config, tensors, check_factors(config, tensors)


def check_named_adapter(files: dict[str, Path], folder: str) -> None:
    """A further adapter of a multi-adapter folder (PEFT's save_pretrained writes each adapter but the
    first into a subfolder named after it), checked as strictly as the first."""
    weights = files.get(f"{folder}/{algebra.WEIGHTS_FILE}")
    if weights is None:
        raise InvalidAdapter(f"{folder}/{algebra.CONFIG_FILE} has no {folder}/{algebra.WEIGHTS_FILE} beside it")
    try:
        check_adapter(files[f"{folder}/{algebra.CONFIG_FILE}"], weights)
    except InvalidAdapter as e:
        raise InvalidAdapter(f"the adapter in {folder}/: {e.message}") from None


def read_config(path: Path) -> dict[str, Any]:
    name = algebra.CONFIG_FILE
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InvalidAdapter(f"{name}: larger than {MAX_CONFIG_BYTES} bytes")
    config = parse_json(path.read_bytes(), name)
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{name}: must be a JSON object")
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise InvalidAdapter(f'{name}: peft_type is {peft_type!r}; only LoRA adapters ("LORA") are accepted')
    r = config.get("r")
    if type(r) is not int or not 1 <= r <= MAX_RANK:
        raise InvalidAdapter(f"{name}: r must be an integer from 1 to {MAX_RANK}, got {r!r}")
    alpha = config.get("lora_alpha")
    if not is_number(alpha):
        raise InvalidAdapter(f"{name}: lora_alpha must be a finite number, got {alpha!r}")
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base.strip():
        raise InvalidAdapter(f"{name}: base_model_name_or_path must name the base model")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        check_pattern(targets, "target_modules")
    elif isinstance(targets, list) and all(isinstance(t, str) for t in targets):
        if len(targets) > MAX_PATTERNS or any(len(t) > MAX_PATTERN_CHARS for t in targets):
            raise InvalidAdapter(f"{name}: target_modules has more than {MAX_PATTERNS} names or a name too long")
    else:
        raise InvalidAdapter(f"{name}: target_modules must be a list of module names or a regex string")
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(key) or {}
        if not isinstance(pattern, dict) or len(pattern) > MAX_PATTERNS:
            raise InvalidAdapter(f"{name}: {key} must map at most {MAX_PATTERNS} module patterns to numbers")
        for pattern_key, value in pattern.items():
            check_pattern(pattern_key, key)
            if not is_number(value):
                raise InvalidAdapter(f"{name}: {key}[{pattern_key!r}] must be a finite number, got {value!r}")
    if any(type(v) is not int or not 1 <= v <= MAX_RANK for v in (config.get("rank_pattern") or {}).values()):
        raise InvalidAdapter(f"{name}: rank_pattern values must be integers from 1 to {MAX_RANK}")
    return config


def is_number(value: Any) -> bool:
    """A finite int or float (JSON allows integers too large for a float: those are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def check_pattern(pattern: Any, key: str) -> None:
    """A module-name regex from the config: bounded, and one the regex engine compiles."""
    if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidAdapter(
            f"{algebra.CONFIG_FILE}: {key} patterns must be strings of at most {MAX_PATTERN_CHARS} characters"
        )
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise InvalidAdapter(
            f"{algebra.CONFIG_FILE}: {key} {pattern!r} is not a valid regular expression ({e})"
        ) from None


def check_factors(config: dict[str, Any], tensors: dict) -> set[str]:
    """Every tensor (what peft_format.sort_keys places: it refused the rest) fits: lora_A/lora_B weights of a
    targeted module in pairs with shapes agreeing with r, and what goes with them (DoRA magnitudes, lora_B
    biases, embedding LoRA, token rows). The modules with Linear factors, which routing analyses."""
    name = algebra.WEIGHTS_FILE
    if not tensors:
        raise InvalidAdapter(f"{name}: holds no tensors")
    if len(tensors) > 2 * MAX_MODULES:
        raise InvalidAdapter(f"{name}: more than {MAX_MODULES} modules")
    parts = peft_format.sort_keys(config, tensors)
    shape = {key: tuple(info.shape) for key, info in tensors.items()}
    for module, keys in sorted(parts.factors.items()) + sorted(parts.embeddings.items()):
        if len(module) > MAX_MODULE_NAME_CHARS:
            raise InvalidAdapter(f"{name}: module name {module[:60]!r}... is longer than {MAX_MODULE_NAME_CHARS}")
        check_pair(config, module, keys, shape, embedding=module in parts.embeddings)
    for parameter in parts.saved:
        if len(parameter) > MAX_MODULE_NAME_CHARS:
            raise InvalidAdapter(f"{name}: {parameter[:60]!r}... is longer than {MAX_MODULE_NAME_CHARS}")
    for module, (rows, key) in parts.tokens.items():
        got = shape[key]
        if len(got) != 2 or got[0] != len(rows) or len(set(rows)) != len(rows):
            raise InvalidAdapter(
                f"{name}: {key} is {list(got)}, but trainable_token_indices names {len(rows)} distinct rows of {module}"
            )
    return set(parts.factors)


def check_pair(config: dict[str, Any], module: str, keys: dict[str, str], shape: dict, embedding: bool) -> None:
    """One module's factors: both present, matrices of rank r (lora_A r x in, lora_B out x r; an embedding's
    lora_embedding_A r x vocab, lora_embedding_B dim x r), selected by target_modules; its DoRA magnitude
    and lora_B bias one value per output."""
    name, kind = algebra.WEIGHTS_FILE, "lora_embedding_" if embedding else "lora_"
    for side in ("A", "B"):
        if side not in keys:
            raise InvalidAdapter(f"{name}: {kind}{side} missing for {module}")
    a, b = shape[keys["A"]], shape[keys["B"]]
    if len(a) != 2 or len(b) != 2:
        raise InvalidAdapter(f"{name}: {module}: {kind}A and {kind}B must be matrices, got {a} and {b}")
    if 0 in a or 0 in b:
        raise InvalidAdapter(f"{name}: {module}: {kind}A is {a[0]}x{a[1]} and {kind}B {b[0]}x{b[1]}; no side may be 0")
    try:
        r = algebra.module_rank(config, module)
        selected = algebra.targets_module(config.get("target_modules"), module)
    except ValueError as e:  # a pattern too slow to match this name
        raise InvalidAdapter(f"{algebra.CONFIG_FILE}: {e}") from None
    if a[0] != r or b[1] != r:
        raise InvalidAdapter(
            f"{name}: {module}: {kind}A is {a[0]}x{a[1]} and {kind}B is {b[0]}x{b[1]}, "
            f"but the config says rank {r} ({kind}A must be r x in, {kind}B out x r)"
        )
    if not selected:
        raise InvalidAdapter(
            f"{name}: {module} has factors but is not selected by target_modules {config.get('target_modules')!r}"
        )
    if config.get("use_dora") and not embedding and shape.get(keys.get("magnitude")) != (b[0],):
        got = shape.get(keys.get("magnitude"))
        raise InvalidAdapter(
            f"{name}: {module}: a DoRA adapter needs its magnitude vector of {b[0]} values (one per output), "
            + (f"got shape {list(got)}" if got else "and it has none")
        )
    if "bias" in keys and shape[keys["bias"]] != (b[0],):
        raise InvalidAdapter(f"{name}: {module}: lora_B.bias is {list(shape[keys['bias']])}, not {b[0]} values")


def factor_shapes(tensors: dict, config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) per module with Linear factors, from checked headers: A is r x in, B is
    out x r."""
    keys = peft_format.sort_keys(config, tensors).factors
    return {m: (tensors[k["A"]].shape[1], tensors[k["B"]].shape[0]) for m, k in keys.items()}


def read_examples(path: Path) -> list[str]:
    """examples.jsonl: one JSON value a line, a string or an object with a string "input" (or "text")."""
    if path.stat().st_size > MAX_EXAMPLES_BYTES:
        raise InvalidAdapter(f"{EXAMPLES_FILE}: larger than {MAX_EXAMPLES_BYTES} bytes")
    out: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InvalidAdapter(f"{EXAMPLES_FILE}: must be UTF-8 text") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        value = parse_json(line, f"{EXAMPLES_FILE}: line {number}")
        if isinstance(value, dict):
            value = value.get("input", value.get("text"))
        if not isinstance(value, str) or len(value) > MAX_EXAMPLE_CHARS:
            raise InvalidAdapter(
                f'{EXAMPLES_FILE}: line {number} must be a string (or an object with a string "input") '
                f"of at most {MAX_EXAMPLE_CHARS} characters"
            )
        out.append(value)
        if len(out) > MAX_EXAMPLES:
            raise InvalidAdapter(f"{EXAMPLES_FILE}: more than {MAX_EXAMPLES} examples")
    return out
