"""Write a real PEFT LoRA adapter for a tiny random Llama into a folder (no download needed).

    python examples/make_adapter.py my-adapter

The folder holds what PEFT's save_pretrained writes: adapter_config.json,
adapter_model.safetensors and README.md, ready for `POST /v1/adapters/{ns}/{name}`.
"""

from __future__ import annotations

import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

BASE_MODEL = "quiver-demo/tiny-llama"


def tiny_llama(seed: int = 0, name: str = BASE_MODEL) -> LlamaForCausalLM:
    """A 2-layer Llama with random weights, built from a config."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    model.name_or_path = model.config.name_or_path = name
    return model


def main(folder: str) -> None:
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(tiny_llama(), lora).save_pretrained(folder)
    print(f"wrote a LoRA adapter for {BASE_MODEL} to {folder}/")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "my-adapter")
