"""Building adapters for tests: valid PEFT-format folders from random factors, and the raw bytes
of malformed safetensors files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

from quiver_hub.registry.lora.algebra import factor_key

BASE = "quiver-test/tiny-llama"


def lora_config(r: int = 4, alpha: float = 8, targets: list[str] | str = ("q_proj", "v_proj"), **extra) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": list(targets) if not isinstance(targets, str) else targets,
        "base_model_name_or_path": BASE,
        "use_rslora": False,
        "fan_in_fan_out": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "lora_dropout": 0.0,
        "bias": "none",
        **extra,
    }


def write_adapter(
    folder: Path,
    r: int = 4,
    layers: int = 2,
    hidden: int = 16,
    seed: int = 0,
    config: dict | None = None,
    extra_files: dict[str, bytes] | None = None,
    projs: tuple[str, ...] = ("q_proj", "v_proj"),
    direction: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A valid PEFT LoRA folder: `projs` of `layers` layers, random factors. With `direction`
    (module -> unit vector), that module's A gets a strong component along it."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(layers):
        for proj in projs:
            module = f"model.layers.{i}.self_attn.{proj}"
            A = torch.randn(r, hidden, generator=g)
            if direction and module in direction:
                A[0] += 20 * direction[module]
            tensors[factor_key(module, "A")] = A
            tensors[factor_key(module, "B")] = torch.randn(hidden, r, generator=g)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(config or lora_config(r=r)))
    for name, data in (extra_files or {}).items():
        (folder / name).write_bytes(data)
    return folder


def write_factors(folder: Path, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], config: dict) -> Path:
    """A PEFT-format folder from given (A, B) per module."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (A, B) in factors.items():
        tensors[factor_key(module, "A")] = A.float().contiguous()
        tensors[factor_key(module, "B")] = B.float().contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def raw_safetensors(header: dict, data: bytes, header_len: int | None = None) -> bytes:
    """Hand-built safetensors bytes, so a test can break any part of the format."""
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if header_len is None else header_len) + blob + data


def upload_parts(folder: Path) -> list[tuple[str, tuple[str, bytes]]]:
    """httpx multipart parts for every file of a folder, each named 'files' with its relative path."""
    return [
        ("files", (p.relative_to(folder).as_posix(), p.read_bytes())) for p in sorted(folder.rglob("*")) if p.is_file()
    ]
