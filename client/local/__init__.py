"""The LoRA algebra that runs on a local torch model: adapters in memory, merges and their kernel, token-level
Arrow, what a model reads (capture), and few-shot composition. Nothing here talks HTTP."""
