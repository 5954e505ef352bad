"""The LoRA format and algebra, shared with the thin client: torch, safetensors and numpy, nothing else of Quiver.

`algebra`: factors, scalings, prototypes, sketches and low-rank compression; `peft_format`: every setting and
tensor PEFT writes, placed, applied or refused by name.
"""
