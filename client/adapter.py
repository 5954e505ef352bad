"""A LoRA adapter in memory: its PEFT config and its factors per module (registry.lora's format)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry import lora


@dataclass
class Adapter:
    """Factors per module (A: r x in, B: out x r, scaling with PEFT's rank/alpha patterns and rslora)."""

    name: str
    config: dict[str, Any]
    factors: dict[str, lora.Factors]

    @property
    def fan_in_fan_out(self) -> bool:
        """True for models that store weights in x out (GPT-2's Conv1D): the delta is transposed."""
        return bool(self.config.get("fan_in_fan_out"))

    @classmethod
    def load(cls, folder: str | Path) -> Adapter:
        """Read a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)."""
        folder = Path(folder)
        config_path, weights_path = folder / lora.CONFIG_FILE, folder / lora.WEIGHTS_FILE
        if not config_path.is_file() or not weights_path.is_file():
            raise FileNotFoundError(
                f"{folder} is not a PEFT LoRA adapter: it needs {lora.CONFIG_FILE} and {lora.WEIGHTS_FILE}"
            )
        config = json.loads(config_path.read_text())
        if config.get("peft_type") != "LORA":
            raise ValueError(f"{folder}: peft_type is {config.get('peft_type')!r}, not a LoRA adapter")
        return cls(folder.name, config, lora.load_factors(weights_path, config))
