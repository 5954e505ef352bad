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


def main(folder: str) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    base = LlamaForCausalLM(config)
    base.name_or_path = base.config.name_or_path = "quiver-demo/tiny-llama"
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(folder)
    print(f"wrote a LoRA adapter for quiver-demo/tiny-llama to {folder}/")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "my-adapter")
