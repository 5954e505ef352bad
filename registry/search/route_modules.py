"""Which modules a hub routes on: the default choice, and the modules of one adapter that are indexed.

A route reads every prototype of every module it names, so the modules a hub holds decide its memory and
speed: a Llama-2-7B-shaped adapter on every projection is 5.4 MiB of index and 224 modules to score. The
default, the value projection of every layer (32 of those 224 modules, 641 KiB an adapter), was chosen on
the benchmark's four libraries by routing quality against bytes per adapter (bench/README.md, "A hub on
its defaults"): routed bare, its worst library is within 0.02 of every module's (0.55 against 0.57
first), where every 8-module choice measured loses about half (0.23-0.34). The query projection of every
4th layer (EVERY_4TH_LAYER_QUERIES, 160 KiB, the best of those) suits a hub of many large adapters that
carry examples, with which every choice routes alike. Both are spelled for the common architectures:
v_proj / q_proj (Llama, Mistral, Qwen, Gemma), value / query (BERT), and the fused c_attn, qkv_proj,
query_key_value and Wqkv (GPT-2, Phi-3, Falcon, MPT), whose input is the same. An adapter that adapts
none of the chosen modules is indexed on every module it adapts, so no choice leaves an adapter out of
routing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

FUSED = r"c_attn|qkv_proj|query_key_value|Wqkv"  # one projection for queries, keys and values
LAYER = r"(?:.*\.)?(?:layers|layer|h|blocks)\."
EVERY_4TH_LAYER = r"(?:\d*[02468])?[048]|\d*[13579][26]"  # 0, 4, 8, 12, ..., 100, ...
DEFAULT_ROUTE_MODULES = rf"{LAYER}\d+\.(?:.*\.)?(?:v_proj|value|{FUSED})"
EVERY_4TH_LAYER_QUERIES = rf"{LAYER}(?:{EVERY_4TH_LAYER})\.(?:.*\.)?(?:q_proj|query|{FUSED})"
EVERY_MODULE = ("", ".*")  # the expressions that choose every module


class ModuleChoice:
    """The modules a regular expression (matched in full against module names) chooses."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self._match = None if expression in EVERY_MODULE else re.compile(expression).fullmatch

    @property
    def every(self) -> bool:
        return self._match is None

    def chooses(self, module: str) -> bool:
        return self._match is None or self._match(module) is not None

    def of_adapter(self, adapted: Iterable[str]) -> set[str]:
        """The modules of one adapter that are indexed: those chosen, or all when none is."""
        adapted = set(adapted)
        return {m for m in adapted if self.chooses(m)} or adapted
