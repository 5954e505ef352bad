"""Which modules a hub routes on: the default choice, and the modules of one adapter that are indexed.

A route reads every prototype of every module it names, so the modules a hub holds decide its memory and
speed: a Llama-2-7B-shaped adapter on every projection is 5.4 MiB of index and 224 modules to score, on
the default choice 160 KiB and 8. The default, the query projection of every 4th layer (layers 0, 4, 8,
...), was chosen on four libraries by routing quality against bytes per adapter (bench/README.md, "Which
modules a hub routes on"); it is spelled for the common architectures: q_proj (Llama, Mistral, Qwen,
Gemma), query (BERT), and the fused c_attn, qkv_proj, query_key_value and Wqkv (GPT-2, Phi-3, Falcon,
MPT). An adapter that adapts none of the chosen modules is indexed on every module it adapts, so no
choice leaves an adapter out of routing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

EVERY_4TH_LAYER = r"(?:\d*[02468])?[048]|\d*[13579][26]"  # 0, 4, 8, 12, ..., 100, ...
DEFAULT_ROUTE_MODULES = (
    rf"(?:.*\.)?(?:layers|layer|h|blocks)\.(?:{EVERY_4TH_LAYER})\.(?:.*\.)?"
    r"(?:q_proj|query|c_attn|qkv_proj|query_key_value|Wqkv)"
)
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
