r"""Which modules a hub routes on by default: routing quality on every library against the bytes a
Llama-2-7B-shaped adapter holds in the hub's index for the same choice (issue 32).

    python -m bench.zeroshot_modules   # ~10 min, after bench.real_library and bench.libraries have trained

Four libraries: the first (bench/real_library.py, 15 adapters of every projection and layer, called A
here) and bench/libraries.py's B, C and D (nine adapters each, mixed in form: attention-only, top eight
layers, ranks 4-16, DoRA, rsLoRA). Every held-out chat (20 a task) is captured once on every module; each
candidate set of modules (a QUIVER_ROUTE_MODULES expression, matched in full against module names) then
routes it by the hub's formula, brute force (docs/architecture.md, "Finding adapters": centered states,
|<h, v>|, top k per token softmaxed, averaged over tokens, then over the routed modules each adapter
adapts): bare, and with examples (averaged with the share of softmax(cos / 0.05) of the chat's words to
each adapter's five example inputs, as `arrow+examples`). As in the hub (ModuleChoice.of_adapter), an
adapter that adapts none of the modules named is routed on all of its own; a column counts them.

The bytes are PrototypeIndex's (float32 prototypes, int8 codes, norms) for the modules the same
expression matches in a Llama-2-7B (32 layers x q, k, v, o, gate, up, down).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from bench.bench_memory import MODULES as LLAMA_7B_MODULES
from bench.bench_memory import index_bytes
from bench.common import table
from bench.libraries import HELD_OUT, LIBRARIES, adapters, split, train_library
from bench.real_library import Recipe, library, load_model
from bench.tasks import TASKS, Task
from bench.zeroshot_scoring import prototypes, token_weights
from quiver_hub import Adapter, reference_means
from quiver_hub.local.capture import capture_inputs, chat_tokens
from quiver_hub.registry.search.embedder import TextEmbedder
from quiver_hub.registry.search.route_modules import DEFAULT_ROUTE_MODULES, EVERY_4TH_LAYER, ModuleChoice
from quiver_hub.registry.search.routing import EXAMPLES_TEMPERATURE
from quiver_hub.registry.search.vectors import normalised_mean

EXAMPLES = 5  # example inputs per adapter, as bench/bench_zeroshot.py publishes them

EVERY_2ND = r"\d*[02468]"
CANDIDATES = {
    "every module": r".*",
    "q_proj": r".*\.q_proj",
    "v_proj": r".*\.v_proj",
    "q_proj, every 2nd layer": rf".*\.layers\.(?:{EVERY_2ND})\.self_attn\.q_proj",
    "attention, every 4th layer": rf".*\.layers\.(?:{EVERY_4TH_LAYER})\.self_attn\.[qkvo]_proj",
    "q_proj and v_proj, every 4th layer": rf".*\.layers\.(?:{EVERY_4TH_LAYER})\.self_attn\.[qv]_proj",
    "every module, every 4th layer": rf".*\.layers\.(?:{EVERY_4TH_LAYER})\..*",
    "q_proj, every 4th layer": rf".*\.layers\.(?:{EVERY_4TH_LAYER})\.self_attn\.q_proj",
    "v_proj, every 4th layer": rf".*\.layers\.(?:{EVERY_4TH_LAYER})\.self_attn\.v_proj",
    "k_proj, every 4th layer": rf".*\.layers\.(?:{EVERY_4TH_LAYER})\.self_attn\.k_proj",
    "q_proj, every 8th layer": r".*\.layers\.(?:0|8|16|24|32|40|48|56|64|72|80|88|96)\.self_attn\.q_proj",
    "the hub's default (DEFAULT_ROUTE_MODULES)": DEFAULT_ROUTE_MODULES,
    "q_proj of layers 0, 8, ... and k_proj of 4, 12, ...": r".*\.layers\.(?:0|8|16|24|32|40|48|56)\.self_attn\.q_proj"
    r"|.*\.layers\.(?:4|12|20|28|36|44|52|60)\.self_attn\.k_proj",
}
TOP_KS = (3, 1)


def first_library() -> tuple[dict[str, Path], dict[str, Task], dict[str, tuple[list, list]]]:
    folders = library()
    recipe = Recipe()
    tasks = {name: TASKS[name] for name in folders}
    return folders, tasks, {n: t.split(recipe.train_examples, HELD_OUT, seed=recipe.seed) for n, t in tasks.items()}


def other_library(name: str) -> tuple[dict[str, Path], dict[str, Task], dict[str, tuple[list, list]]]:
    folders = train_library(name)
    tasks = {t.name: t for t, _, _ in adapters(name)}
    return folders, tasks, {t.name: split(t, recipe) for t, recipe, _ in adapters(name)}


def module_weights(model, tok, folders, tasks, splits) -> list[tuple[str, dict[str, dict[int, dict[str, float]]]]]:  # noqa: ANN001
    """For each held-out chat (its task's name): module -> top k -> adapter -> its weight averaged over
    the tokens, over the adapters that adapt the module."""
    protos = prototypes(folders)
    modules = sorted(protos)
    means = reference_means(model, tok, modules, chat=True)
    out = []
    for name, (_, held) in splits.items():
        for x in held:
            ids, mask = chat_tokens(tok, [{"role": "user", "content": tasks[name].prompt(x)}])
            states = capture_inputs(model, tok, None, modules, input_ids=ids, mask=mask)
            per_module = {}
            for m in modules:
                names = list(protos[m])
                logits = ((states[m] - means[m]) @ torch.stack([protos[m][n][1][0] for n in names]).T).abs()
                per_module[m] = {
                    k: dict(zip(names, token_weights(logits, k, 1.0).tolist(), strict=True)) for k in TOP_KS
                }
            out.append((name, per_module))
    return out


def example_shares(embedder: TextEmbedder, tasks: dict[str, Task], splits: dict) -> list[dict[str, float]]:
    """Per held-out chat, in module_weights' order: each adapter's share of softmax(cos / T) of the chat's
    words to the mean embedding of its example inputs."""
    names = list(splits)
    examples = torch.tensor(
        [normalised_mean(embedder.embed([tasks[n].prompt(x) for x in splits[n][0][:EXAMPLES]])) for n in names]
    )
    out = []
    for name, (_, held) in splits.items():
        queries = torch.tensor(embedder.embed([tasks[name].prompt(x) for x in held]))
        for row in torch.softmax(queries @ examples.T / EXAMPLES_TEMPERATURE, dim=1):
            out.append(dict(zip(names, row.tolist(), strict=True)))
    return out


def rank(weights: dict[str, dict[int, dict[str, float]]], indexed: dict[str, set[str]], k: int) -> dict:
    """Each adapter's score over the modules of it the hub indexes (`indexed`, ModuleChoice.of_adapter)."""
    summed = dict.fromkeys(indexed, 0.0)
    for m, by_k in weights.items():
        for n, w in by_k[k].items():
            if m in indexed[n]:
                summed[n] += w
    return {n: summed[n] / len(indexed[n]) for n in indexed}


def order(scores: dict[str, float]) -> list[str]:
    return sorted(scores, key=lambda n: (-scores[n], n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--libraries", default=",".join(["A", *LIBRARIES]), help="comma separated (default: all)")
    libs = parser.parse_args().libraries.split(",")
    model, tok = load_model()
    embedder = TextEmbedder()
    results: dict[str, dict[str, dict[str, float]]] = {}  # candidate -> library -> measure -> value
    for lib in libs:
        folders, tasks, splits = first_library() if lib == "A" else other_library(lib)
        captured = module_weights(model, tok, folders, tasks, splits)
        shares = example_shares(embedder, tasks, splits)
        names = list(folders)
        adapted = {n: set(Adapter.load(f).factors) for n, f in folders.items()}
        for label, expression in CANDIDATES.items():
            choice = ModuleChoice(expression)
            indexed = {n: choice.of_adapter(ms) for n, ms in adapted.items()}
            hits = dict.fromkeys(["bare first", "bare top 3", "bare first, top 1", "examples first"], 0)
            for (task, weights), share in zip(captured, shares, strict=True):
                bare = rank(weights, indexed, 3)
                ranked = order(bare)
                hits["bare first"] += ranked[0] == task
                hits["bare top 3"] += task in ranked[:3]
                hits["bare first, top 1"] += order(rank(weights, indexed, 1))[0] == task
                hits["examples first"] += order({n: (bare[n] + share[n]) / 2 for n in names})[0] == task
            on_own = sum(1 for ms in adapted.values() if not any(choice.chooses(m) for m in ms))
            results.setdefault(label, {})[lib] = {k: v / len(captured) for k, v in hits.items()} | {"on own": on_own}
            print(f"  {lib} {label}: {results[label][lib]}", file=sys.stderr)
    rows = []
    for label, expression in CANDIDATES.items():
        r = results[label]
        routed = [m for m in LLAMA_7B_MODULES if re.fullmatch(expression, m)]
        rows.append(
            [
                label,
                " / ".join(f"{r[lib]['bare first']:.2f}" for lib in libs),  # noqa: B023
                f"{min(r[lib]['bare first'] for lib in libs):.2f}",
                f"{min(r[lib]['bare top 3'] for lib in libs):.2f}",
                f"{min(r[lib]['bare first, top 1'] for lib in libs):.2f}",
                f"{min(r[lib]['examples first'] for lib in libs):.2f}",
                str(sum(int(r[lib]["on own"]) for lib in libs)),
                str(len(routed)),
                f"{index_bytes(routed) / 1024:,.0f}",
            ]
        )
    print(
        f"Routing on a subset of the modules, brute force of the hub's formula on libraries {', '.join(libs)} (A: 15 "
        "adapters; B, C, D: 9 each, mixed forms), 20 held-out chats a task: right adapter first (top k = 3 per "
        "token unless said), the worst library's; and what a Llama-2-7B-shaped adapter holds in the hub's index"
    )
    print(
        table(
            [
                "modules routed",
                f"bare first, {' / '.join(libs)}",
                "bare first, worst",
                "bare top 3, worst",
                "bare first at top k = 1, worst",
                "with examples first, worst",
                "adapters none of whose modules it names",
                "7B modules",
                "index / 7B adapter (KiB)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
