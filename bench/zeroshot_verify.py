"""Re-ranking the route's top few bare adapters by what each one answers, judged by the base model.

    python -m bench.zeroshot_verify   # ~10 min, after bench.real_library and bench.libraries have trained

The route (brute force of the hub's formula on its default modules, bench/zeroshot_modules.py) puts the
right adapter in its top 3 far more often than first. The earlier re-rankers (bench/bench_zeroshot.py)
asked how sure, or how changed, the model is with each candidate merged, and another task's adapter makes
it just as sure. Here each candidate answers the chat (greedy, merged, as a user would run it) and the
base model, which read the user's instruction, scores each answer: log p_base(answer | chat), summed over
the answer's tokens or its mean per token. The criterion and the number of candidates are chosen
leave-one-library-out (best worst library on the others), and reported on the one left out, with the
exact match of the chosen answers as a share of the right adapter's gain over the base model.
"""

from __future__ import annotations

import statistics
import sys

import torch

from bench.common import table
from bench.real_library import chat, generate
from bench.zeroshot_modules import first_library, module_weights, order, other_library, rank
from bench.zeroshot_scoring import prototypes
from quiver_hub import Adapter, merged
from quiver_hub.registry.search.route_modules import DEFAULT_ROUTE_MODULES, ModuleChoice

LIBRARIES = ("A", "B", "C", "D")
CANDIDATES = (1, 2, 3)  # 1: the route's first, as it is
CRITERIA = ("sum", "mean")


@torch.no_grad()
def answer_logprobs(model, tok, pairs: list[tuple[str, str]], batch: int = 20) -> list[tuple[float, int]]:  # noqa: ANN001
    """(summed log-probability, tokens) of each answer after its one-turn chat, under `model`."""
    out = []
    for start in range(0, len(pairs), batch):
        rows = [(chat(tok, p), chat(tok, p, a)) for p, a in pairs[start : start + batch]]
        width = max(len(full) for _, full in rows)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(full)) + full for _, full in rows])
        mask = torch.tensor([[0] * (width - len(full)) + [1] * len(full) for _, full in rows])
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        picked = logp.gather(2, ids[:, 1:, None])[..., 0]
        for row, (prompt, full) in enumerate(rows):
            n = len(full) - len(prompt)
            out.append((picked[row, width - 1 - n :].sum().item(), n))
    return out


def library_rows(model, tok, lib: str) -> tuple[list[dict], dict[str, float]]:  # noqa: ANN001
    """Per held-out chat: its task, the route's top 3, each candidate's answer, whether it is right and the
    base model's log-probability of it; and the base model's and each own adapter's exact match per task."""
    folders, tasks, splits = first_library() if lib == "A" else other_library(lib)
    adapted = {n: set(Adapter.load(f).factors) for n, f in folders.items()}
    indexed = {n: ModuleChoice(DEFAULT_ROUTE_MODULES).of_adapter(ms) for n, ms in adapted.items()}
    routed = set().union(*indexed.values())
    protos = {m: v for m, v in prototypes(folders).items() if m in routed}
    held = [(name, x) for name, (_, xs) in splits.items() for x in xs]
    weights = module_weights(model, tok, protos, [(name, tasks[name].prompt(x)) for name, x in held])
    rows = [
        {"task": name, "x": x, "prompt": tasks[name].prompt(x), "ranked": order(rank(w, indexed, "top 3"))[:3]}
        for (name, x), (_, w) in zip(held, weights, strict=True)
    ]
    answers: dict[tuple[int, str], str] = {}
    for n, folder in folders.items():
        mine = [i for i, r in enumerate(rows) if n in r["ranked"]]
        if mine:
            with merged(model, Adapter.load(folder)):
                for i, a in zip(mine, generate(model, tok, [rows[i]["prompt"] for i in mine]), strict=True):
                    answers[i, n] = a
    keys = sorted(answers)
    logprobs = answer_logprobs(model, tok, [(rows[i]["prompt"], answers[i, n]) for i, n in keys])
    judged = dict(zip(keys, logprobs, strict=True))
    for i, r in enumerate(rows):
        r["answers"] = [answers[i, n] for n in r["ranked"]]
        r["right"] = [a == tasks[r["task"]].answer(r["x"]) for a in r["answers"]]
        r["judged"] = [judged[i, n] for n in r["ranked"]]
    unmerged = generate(model, tok, [r["prompt"] for r in rows])
    base = statistics.mean(a == tasks[name].answer(x) for (name, x), a in zip(held, unmerged, strict=True))
    own = []
    for name, (_, xs) in splits.items():
        with merged(model, Adapter.load(folders[name])):
            answered = generate(model, tok, [tasks[name].prompt(x) for x in xs])
        own.append(statistics.mean(a == tasks[name].answer(x) for a, x in zip(answered, xs, strict=True)))
    return rows, {"base": base, "right adapter": statistics.mean(own)}


def pick(row: dict, criterion: str, k: int) -> int:
    """The index, in the route's order, of the candidate this re-ranking picks among the first k."""
    score = [s / n if criterion == "mean" else s for s, n in row["judged"][:k]]
    return max(range(len(score)), key=lambda i: (score[i], -i))


def first_rate(rows: list[dict], criterion: str, k: int) -> float:
    return statistics.mean(r["ranked"][pick(r, criterion, k)] == r["task"] for r in rows)


def exact_match(rows: list[dict], criterion: str, k: int) -> float:
    return statistics.mean(r["right"][pick(r, criterion, k)] for r in rows)


def any_right(rows: list[dict], k: int) -> float:
    """The bound of re-ranking k candidates by their answers: some candidate's answer is right."""
    return statistics.mean(any(r["right"][:k]) for r in rows)


def main() -> None:
    from bench.real_library import load_model

    libs = sys.argv[1].split(",") if len(sys.argv) > 1 else list(LIBRARIES)
    model, tok = load_model()
    found = {}
    for lib in libs:
        found[lib] = library_rows(model, tok, lib)
        print(f"  {lib}: route first {first_rate(found[lib][0], 'sum', 1):.2f}", file=sys.stderr)
    options = [("sum", 1)] + [(c, k) for c in CRITERIA for k in CANDIDATES[1:]]
    cell = lambda x, c, k: f"{first_rate(found[x][0], c, k):.2f} / {exact_match(found[x][0], c, k):.2f}"  # noqa: E731
    print("Bare adapters, the hub's default route (brute force), its top k re-ranked by the base model's")
    print("log-probability of each candidate's greedy answer: right adapter first / exact match of the answer;")
    print("and the bound of any re-ranking by the answers, a candidate's answer right")
    print(
        table(
            ["re-ranking", *libs, "worst (first)"],
            [
                ["the route's first" if k == 1 else f"{c}, top {k}", *(cell(x, c, k) for x in libs),
                 f"{min(first_rate(found[x][0], c, k) for x in libs):.2f}"]
                for c, k in options
            ]
            + [[f"bound: any of the top {k} answers right", *(f"{any_right(found[x][0], k):.2f}" for x in libs), ""]
               for k in CANDIDATES[1:]],
        )
    )  # fmt: skip
    print("\nChosen leave-one-library-out (the best worst first on the others), reported on the one left out;")
    print("exact match as a share of the right adapter's gain over the base model")
    rows = []
    for lib in libs:
        others = [x for x in libs if x != lib] or [lib]
        c, k = max(options[1:], key=lambda o: min(first_rate(found[x][0], *o) for x in others))
        r, acc = found[lib]
        share = [
            (exact_match(r, *o) - acc["base"]) / (acc["right adapter"] - acc["base"]) for o in (("sum", 1), (c, k))
        ]
        rows.append(
            [lib, f"{c}, top {k}", f"{first_rate(r, 'sum', 1):.2f}", f"{first_rate(r, c, k):.2f}",
             f"{acc['base']:.2f}", f"{acc['right adapter']:.2f}",
             f"{exact_match(r, 'sum', 1):.2f} ({share[0]:.0%})", f"{exact_match(r, c, k):.2f} ({share[1]:.0%})"]
        )  # fmt: skip
    print(
        table(
            ["library", "chosen on the others", "route first", "re-ranked first", "base", "right adapter",
             "route's first merged", "re-ranked merged"],
            rows,
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
