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
from quiver_hub.local.capture import REFERENCE, capture_inputs, chat_tokens
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
TOP_KS = (3, 1)  # adapters each token keeps (the route's top_k)
WHAT = ("bare first", "bare top 3", "examples first")
# An adapter's score as the route gives it, or calibrated by its score on ordinary text (capture.REFERENCE,
# the texts whose mean input the route subtracts): less it, or over it. "" is the route's.
CALIBRATIONS = ("", ", less ordinary", ", over ordinary")
WEIGHINGS = ("", ", modules by norm")  # an adapter's modules alike, or weighted by its delta's norm on each
# A token's logit for an adapter: |<h, v>| as the route takes it (""), or over the spread of <h, v> on
# ordinary text (the root mean square over REFERENCE's tokens, centered as h is), so that a prototype
# along a direction every input varies in does not win every token.
LOGITS = ("", ", over its spread")
SCORES = [f"top {k}{logit}" for logit in LOGITS for k in TOP_KS]
OPTIONS = [(score, weigh + how) for score in SCORES for weigh in WEIGHINGS for how in CALIBRATIONS]
MEASURES = [f"{what}, {score}{how}" for score, how in OPTIONS for what in WHAT]


def first_library() -> tuple[dict[str, Path], dict[str, Task], dict[str, tuple[list, list]]]:
    folders = library()
    recipe = Recipe()
    tasks = {name: TASKS[name] for name in folders}
    return folders, tasks, {n: t.split(recipe.train_examples, HELD_OUT, seed=recipe.seed) for n, t in tasks.items()}


def other_library(name: str) -> tuple[dict[str, Path], dict[str, Task], dict[str, tuple[list, list]]]:
    folders = train_library(name)
    tasks = {t.name: t for t, _, _ in adapters(name)}
    return folders, tasks, {t.name: split(t, recipe) for t, recipe, _ in adapters(name)}


def module_weights(
    model, tok, protos, chats: list[tuple[str, str]]
) -> list[tuple[str, dict[str, dict[str, dict[str, float]]]]]:  # noqa: ANN001, E501
    """For each chat (its task's name, the user's words): module -> score (SCORES) -> adapter -> its weight
    averaged over the tokens, over the adapters that adapt the module (`protos`:
    zeroshot_scoring.prototypes)."""
    modules = sorted(protos)
    means = reference_means(model, tok, modules, chat=True)
    vectors = {m: torch.stack([v[1][0] for v in protos[m].values()]) for m in modules}
    as_chat = [chat_tokens(tok, [{"role": "user", "content": t}])[0] for t in REFERENCE]
    ordinary = [capture_inputs(model, tok, None, modules, input_ids=ids) for ids in as_chat]
    spread = {
        m: ((torch.cat([o[m] for o in ordinary]) - means[m]) @ vectors[m].T).pow(2).mean(0).sqrt() for m in modules
    }
    out = []
    for name, words in chats:
        ids, mask = chat_tokens(tok, [{"role": "user", "content": words}])
        states = capture_inputs(model, tok, None, modules, input_ids=ids, mask=mask)
        per_module = {}
        for m in modules:
            names = list(protos[m])
            logits = ((states[m] - means[m]) @ vectors[m].T).abs()
            per_module[m] = {
                f"top {k}{logit}": dict(
                    zip(names, token_weights(logits / spread[m] if logit else logits, k, 1.0).tolist(), strict=True)
                )
                for logit in LOGITS
                for k in TOP_KS
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


def rank(
    weights: dict[str, dict[str, dict[str, float]]],
    indexed: dict[str, set[str]],
    score: str,
    norms: dict[str, dict[str, float]] | None = None,
) -> dict:
    """Each adapter's score (one of SCORES) averaged over the modules of it the hub indexes (`indexed`,
    ModuleChoice.of_adapter), or, with `norms`, weighted by its delta's norm on each."""
    summed = dict.fromkeys(indexed, 0.0)
    total = {n: float(len(ms)) if norms is None else sum(norms[n][m] for m in ms) for n, ms in indexed.items()}
    for m, by_score in weights.items():
        for n, w in by_score[score].items():
            if m in indexed[n]:
                summed[n] += w * (1.0 if norms is None else norms[n][m])
    return {n: summed[n] / total[n] for n in indexed}


def delta_norms(folders: dict[str, Path]) -> dict[str, dict[str, float]]:
    """adapter -> module -> the Frobenius norm of its delta there (s B A)."""
    return {
        name: {
            m: float(f.scaling * (f.B.double() @ f.A.double()).norm()) for m, f in Adapter.load(folder).factors.items()
        }
        for name, folder in folders.items()
    }


def mean_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    return {n: sum(s[n] for s in scores) / len(scores) for n in scores[0]}


def calibrated(scores: dict[str, float], usual: dict[str, float], how: str) -> dict[str, float]:
    """scores as they are (""), less each adapter's score on ordinary text, or over it."""
    how = how.removeprefix(WEIGHINGS[1])
    if how == ", less ordinary":
        return {n: v - usual[n] for n, v in scores.items()}
    if how == ", over ordinary":
        return {n: v / max(usual[n], 1e-6) for n, v in scores.items()}
    return scores


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
        protos = prototypes(folders)
        chats = [(name, tasks[name].prompt(x)) for name, (_, held) in splits.items() for x in held]
        captured = module_weights(model, tok, protos, chats)
        ordinary = module_weights(model, tok, protos, [("", text) for text in REFERENCE])
        shares = example_shares(embedder, tasks, splits)
        names = list(folders)
        adapted = {n: set(Adapter.load(f).factors) for n, f in folders.items()}
        norms = delta_norms(folders)
        for label, expression in CANDIDATES.items():
            choice = ModuleChoice(expression)
            indexed = {n: choice.of_adapter(ms) for n, ms in adapted.items()}
            hits = dict.fromkeys(MEASURES, 0)
            weighed = {w: norms if w else None for w in WEIGHINGS}
            usual = {
                (score, w): mean_scores([rank(o, indexed, score, by) for _, o in ordinary])
                for score in SCORES
                for w, by in weighed.items()
            }
            for (task, weights), share in zip(captured, shares, strict=True):
                for score, how in OPTIONS:
                    w = WEIGHINGS[1] if how.startswith(WEIGHINGS[1]) else ""
                    bare = calibrated(rank(weights, indexed, score, weighed[w]), usual[score, w], how)
                    ranked = order(bare)
                    hits[f"bare first, {score}{how}"] += ranked[0] == task
                    hits[f"bare top 3, {score}{how}"] += task in ranked[:3]
                    hits[f"examples first, {score}{how}"] += (
                        order({n: (bare[n] + share[n]) / 2 for n in names})[0] == task
                    )
            on_own = sum(1 for ms in adapted.values() if not any(choice.chooses(m) for m in ms))
            results.setdefault(label, {})[lib] = {k: v / len(captured) for k, v in hits.items()} | {"on own": on_own}
            firsts = {m: f"{v:.2f}" for m, v in results[label][lib].items() if m.startswith("bare first")}
            print(f"  {lib} {label}: {firsts}", file=sys.stderr)
    rows = []
    for label, expression in CANDIDATES.items():
        r = results[label]
        routed = [m for m in LLAMA_7B_MODULES if re.fullmatch(expression, m)]
        each = lambda measure: " / ".join(f"{r[lib][measure]:.2f}" for lib in libs)  # noqa: E731, B023
        worst = lambda measure: f"{min(r[lib][measure] for lib in libs):.2f}"  # noqa: E731, B023
        rows.append(
            [
                label,
                each("bare first, top 3"),
                worst("bare first, top 3"),
                worst("bare top 3, top 3"),
                each("bare first, top 1"),
                worst("bare first, top 1"),
                worst("bare top 3, top 1"),
                f"{worst('examples first, top 3')} / {worst('examples first, top 1')}",
                str(sum(int(r[lib]["on own"]) for lib in libs)),
                str(len(routed)),
                f"{sum(index_bytes(routed)) / 1024:,.0f} ({index_bytes(routed)[0] / 1024:,.1f})",
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
                f"bare first at top k = 1, {' / '.join(libs)}",
                "bare first at top k = 1, worst",
                "bare top 3 at top k = 1, worst",
                "with examples first, worst, top k = 3 / 1",
                "adapters none of whose modules it names",
                "7B modules",
                "index / 7B adapter, KiB (of it in memory)",
            ],
            rows,
        )
    )
    default = results["the hub's default (DEFAULT_ROUTE_MODULES)"]
    print("\nThe route's top k, and a calibration by ordinary text, on the default modules, chosen")
    print("leave-one-library-out: the option with the best worst library on the others (bare first, then with")
    print("examples), reported on the one left out")
    chosen = []
    for lib in libs:
        others = [o for o in libs if o != lib] or [lib]
        best = max(
            OPTIONS,
            key=lambda o: tuple(min(default[x][f"{w}, {o[0]}{o[1]}"] for x in others) for w in WHAT[::2]),
        )
        chosen.append([lib, f"{best[0]}{best[1]}", *(f"{default[lib][f'{w}, {best[0]}{best[1]}']:.2f}" for w in WHAT)])
    print(table(["left out", "chosen on the others", *WHAT], chosen))
    print("\nEvery option on the default modules: bare first / with examples first, on " + " / ".join(libs))
    print(
        table(
            ["top k, logit, calibration", *libs],
            [
                [f"{score}{how}", *(f"{default[x][f'bare first, {score}{how}']:.2f} / "
                                    f"{default[x][f'examples first, {score}{how}']:.2f}" for x in libs)]
                for score, how in OPTIONS
            ],
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
