"""What the registry computes once per published version (docs/architecture.md, "The algebra"):
Arrow prototypes per module, the parameter sketch, and text embeddings.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quiver_hub.registry.catalogue.files import EXAMPLES_FILE
from quiver_hub.registry.errors import InvalidAdapter
from quiver_hub.registry.intake.validation import read_examples
from quiver_hub.registry.limits import MAX_CARD_CHARS, MAX_EMBEDDED_CHARS
from quiver_hub.registry.lora import algebra, peft_format
from quiver_hub.registry.search.embedder import TextEmbedder
from quiver_hub.registry.search.vectors import normalised_mean

EMBEDDED_EXAMPLES = 256  # the mean embedding of the first ones


@dataclass(frozen=True)
class ModulePrototype:
    module: str
    vector: np.ndarray  # float32, unit norm, length in_features
    sigma: float


@dataclass(frozen=True)
class VersionAnalysis:
    prototypes: list[ModulePrototype]
    sketch: np.ndarray
    outputs: np.ndarray  # algebra.output_sketch: MBC's default embedding
    examples: np.ndarray | None  # mean MiniLM embedding of examples.jsonl, or None


_threads = 1  # how many threads one publish's analysis splits its modules between (use_threads)


def use_threads(n: int) -> None:
    """Split each analysis's modules between n threads (`quiver serve`: QUIVER_ANALYSIS_THREADS). torch
    works on one thread per module meanwhile; each module's numbers are the same on any thread."""
    global _threads
    _threads = max(1, n)


def analyse_module(module: str, f: algebra.Factors) -> tuple[ModulePrototype, torch.Tensor, torch.Tensor]:
    """One module's prototype, its block of the sketch and of the output sketch."""
    if not (torch.isfinite(f.A).all() and torch.isfinite(f.B).all()):
        raise InvalidAdapter(f"{algebra.WEIGHTS_FILE}: {module} has NaN or infinite values")
    v, sigma = algebra.scaled_prototype(f)
    return (
        ModulePrototype(module, v.numpy(), sigma),
        algebra.sketch_block(module, f),
        algebra.output_gram(module, f),
    )


def analyse_weights(weights: Path, config: dict[str, Any]) -> tuple[list[ModulePrototype], np.ndarray, np.ndarray]:
    """Prototypes, sketch and output sketch: what algebra.prototypes, .sketch and .output_sketch give,
    the modules split between the analysis's threads (the sketches' seeded Gaussians, which torch draws on
    one thread, are much of the time)."""
    factors = peft_format.read(weights, config).factors
    modules = sorted(factors)
    if _threads > 1 and len(modules) > 1:
        with ThreadPoolExecutor(min(_threads, len(modules)), thread_name_prefix="quiver-analysis") as pool:
            done = list(pool.map(lambda m: analyse_module(m, factors[m]), modules))
    else:
        done = [analyse_module(m, factors[m]) for m in modules]
    return [d[0] for d in done], algebra.unit_concat([d[1] for d in done]), algebra.unit_concat([d[2] for d in done])


def analyse_version(files: dict[str, Path], config: dict[str, Any], embedder: TextEmbedder) -> VersionAnalysis:
    protos, sketch, outputs = analyse_weights(files[algebra.WEIGHTS_FILE], config)
    examples = None
    if EXAMPLES_FILE in files:
        texts = [t[:MAX_EMBEDDED_CHARS] for t in read_examples(files[EXAMPLES_FILE])[:EMBEDDED_EXAMPLES]]
        if texts:
            examples = normalised_mean(embedder.embed(texts))
    return VersionAnalysis(protos, sketch, outputs, examples)


def card_text(readme: str | None) -> str:
    """The prose of a model card: YAML front matter, HTML comments and markup noise removed."""
    if not readme:
        return ""
    text = re.sub(r"\A---\n.*?\n---\n", "", readme, flags=re.S)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"[#*`>|_\[\]()]+", " ", text)
    return " ".join(text.split())[:MAX_CARD_CHARS]


def describe(description: str, task: str | None, tags: list[str], card: str | None) -> str:
    """The text that represents an adapter in search: description first, as it matters most. Bounded:
    the embedder reads 256 word pieces, so more text would only cost time (under the embedder's lock)."""
    parts = [description.strip(), f"Task: {task}" if task else "", f"Tags: {', '.join(tags)}" if tags else ""]
    parts.append(card_text(card))
    return "\n".join(p for p in parts if p)[:MAX_EMBEDDED_CHARS]
