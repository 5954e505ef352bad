"""Zero-shot routing and clustering on libraries no default was chosen on (issue 30).

    python -m bench.libraries --no-eval      # train the three libraries (~25 min on 2 cores, cached)
    python -m bench.bench_zeroshot           # ~25 min

Three libraries (bench/libraries.py: B, C, D), nine adapters each in three families, no task shared with
another library or with bench/tasks.py, mixed in form (ranks 4-16, attention-only and all-linear, every
layer or the top eight, 40-100 steps, LoRA, DoRA, rsLoRA). Each library is published twice on one real
`quiver serve`: with its description and five example inputs, and bare (weights and config only, as
most public adapters are). Every held-out input (20 a task) is routed through the client as the README
says (`Hub.route(model, tokenizer, messages=...)`, each library alone by its tag), and:

1. right adapter first / in the top 3, default method and the paper's Arrow;
2. re-ranking the route's top few with the user's own model: each candidate merged in turn, the next
   token's distribution at the end of the prompt scored by `confidence` (its largest probability) or
   `shift` (its KL divergence from the base model's). Which criterion and how many candidates are
   chosen by leave-one-library-out: on the other two libraries, reported on the third;
3. exact match with the base model, the right adapter, the top-1 routed (what merge_plan() merges) and
   the re-ranked top-1, as a share of the right adapter's gain;
4. MBC on the hub's default method, k chosen and k = 3: adjusted Rand index against the families.
"""

from __future__ import annotations

import os
import pickle
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
import torch

from bench.common import table
from bench.libraries import HELD_OUT, LIBRARIES, adapters, split, train_library
from bench.real_library import BASE_MODEL, accuracy, cache_dir, chat, load_model
from quiver_hub import Adapter, Hub, merged
from tests.support.servers import free_port, operator_token, serve_process

EXAMPLES = 5
CANDIDATES = (2, 3, 5)
CRITERIA = ("confidence", "shift")


@torch.no_grad()
def next_token_logprobs(model: torch.nn.Module, input_ids: list[int]) -> torch.Tensor:
    """log-probabilities (float32, vocabulary) of the token after `input_ids`."""
    return torch.log_softmax(model(input_ids=torch.tensor([input_ids])).logits[0, -1].float(), -1)


def candidate_scores(model: torch.nn.Module, input_ids: list[int], candidates: list[Adapter]) -> dict[str, list]:
    """criterion -> one score per candidate (higher is better): with each candidate merged, the largest
    next-token probability ("confidence") and the KL divergence from the base model's ("shift")."""
    base = next_token_logprobs(model, input_ids)
    scores: dict[str, list[float]] = {c: [] for c in CRITERIA}
    for adapter in candidates:
        with merged(model, adapter):
            logp = next_token_logprobs(model, input_ids)
        scores["confidence"].append(logp.max().exp().item())
        scores["shift"].append(torch.sum(logp.exp() * (logp - base)).item())
    return scores


def publish(hub: Hub, home: Path, library: str, folders: dict[str, Path]) -> tuple[dict, dict]:
    """repo -> task, with examples and bare."""
    with_examples, bare = {}, {}
    for t, recipe, _ in adapters(library):
        folder = folders[t.name]
        train_inputs, _ = split(t, recipe)
        repo = f"lib/{library}-ex-{t.name}"
        examples = [t.prompt(x) for x in train_inputs[:EXAMPLES]]
        hub.push(folder, repo, description=t.description, task=t.name, tags=[f"{library}-ex"], examples=examples)
        with_examples[repo] = t.name
        plain = home / "bare" / library / t.name
        plain.mkdir(parents=True)
        for file in ("adapter_config.json", "adapter_model.safetensors"):
            (plain / file).symlink_to(folder / file)
        repo = f"lib/{library}-bare-{t.name}"
        hub.push(plain, repo, tags=[f"{library}-bare"])
        bare[repo] = t.name
    return with_examples, bare


def routed(hub: Hub, model, tok, library: str, repos: dict, tag: str, method: str, loaded: dict) -> list[dict]:  # noqa: ANN001
    """One row per held-out input: the task, the ranked tasks, and (bare) each criterion's re-ranked order."""
    rows = []
    for t, recipe, _ in adapters(library):
        _, held = split(t, recipe)
        for x in held:
            prompt = t.prompt(x)
            messages = [{"role": "user", "content": prompt}]
            answer = hub.route(model=model, tokenizer=tok, messages=messages, method=method, tags=[tag], limit=9)
            ranked = [repos[r["id"]] for r in answer]
            row = {"task": t.name, "x": x, "ranked": ranked}
            if loaded:
                top = ranked[: max(CANDIDATES)]
                row["scores"] = candidate_scores(model, chat(tok, prompt), [loaded[n] for n in top])
            rows.append(row)
    return rows


def reranked(row: dict, criterion: str, k: int) -> str:
    scores = row["scores"][criterion][:k]
    return row["ranked"][max(range(len(scores)), key=scores.__getitem__)]


def hit_rate(rows: list[dict], pick) -> float:  # noqa: ANN001
    return sum(pick(r) == r["task"] for r in rows) / len(rows)


def recovery(model, tok, library: str, folders: dict, picks: dict[str, list[tuple]]) -> dict[str, float]:  # noqa: ANN001
    """Mean exact match over the tasks: base, own, and each way of picking one adapter per input."""
    loaded = {n: Adapter.load(f) for n, f in folders.items()}
    out: dict[str, list[float]] = {"base": [], "right adapter": []} | {k: [] for k in picks}
    for t, recipe, _ in adapters(library):
        _, held = split(t, recipe)
        out["base"].append(accuracy(model, tok, t, held))
        with merged(model, loaded[t.name]):
            out["right adapter"].append(accuracy(model, tok, t, held))
        for label, chosen in picks.items():
            by_adapter: dict[str, list] = {}
            for x, name in chosen[t.name]:
                by_adapter.setdefault(name, []).append(x)
            correct = 0.0
            for name, xs in by_adapter.items():
                with merged(model, loaded[name]):
                    correct += accuracy(model, tok, t, xs) * len(xs)
            out[label].append(correct / len(held))
    return {k: statistics.mean(v) for k, v in out.items()}


def mbc_rows(url: str, token: str, library: str, repos: dict, tag: str) -> list[str]:
    from sklearn.metrics import adjusted_rand_score

    family = {t.name: t.family for t, _, _ in adapters(library)}
    cells = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600) as c:
        for k in (None, 3):
            body = {"base_model": BASE_MODEL, "tags": [tag], **({"k": k} if k else {})}
            run = c.post("/v1/clusters", json=body).json()
            members = [(repos[m["id"]], cl["index"]) for cl in run["clusters"] for m in cl["members"]]
            ari = adjusted_rand_score([family[n] for n, _ in members], [i for _, i in members])
            cells.append(f"{ari:.2f}" + ("" if k else f" (k={run['k']})"))
    return cells


def choose(rows_by_library: dict[str, list], left_out: str) -> tuple[str, int]:
    """The criterion and candidate count with the best worst-library top-1 on the other libraries."""
    others = [rows for lib, rows in rows_by_library.items() if lib != left_out]
    options = [(c, k) for c in CRITERIA for k in CANDIDATES]
    return max(options, key=lambda o: (min(hit_rate(r, lambda row: reranked(row, *o)) for r in others), -o[1]))


def main() -> None:
    os.nice(10)
    torch.manual_seed(0)
    folders = {lib: train_library(lib) for lib in LIBRARIES}
    model, tok = load_model()
    routes, bare_rows, mbc = {}, {}, {}
    saved = cache_dir() / "zeroshot-routes.pickle"  # QUIVER_BENCH_REUSE=1: tables from the last run's routes
    if os.environ.get("QUIVER_BENCH_REUSE") and saved.is_file():
        routes, bare_rows, mbc = pickle.loads(saved.read_bytes())
    else:
        routes, bare_rows, mbc = route_libraries(folders, model, tok)
        saved.write_bytes(pickle.dumps((routes, bare_rows, mbc)))
    tables(folders, model, tok, routes, bare_rows, mbc)


def route_libraries(folders: dict, model, tok) -> tuple[dict, dict, dict]:  # noqa: ANN001
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    routes, bare_rows, mbc = {}, {}, {}
    with tempfile.TemporaryDirectory() as home:
        env.update(QUIVER_HOME=home, QUIVER_PORT=str(free_port()))
        token = operator_token(env, "lib")
        with serve_process(env) as url, Hub(url, token, cache_dir=Path(home) / "cache") as hub:
            for lib in LIBRARIES:
                ex, bare = publish(hub, Path(home), lib, folders[lib])
                loaded = {n: Adapter.load(f) for n, f in folders[lib].items()}
                for label, repos, tag, method, load in (
                    ("examples, default", ex, f"{lib}-ex", "arrow+examples", None),
                    ("examples, arrow", ex, f"{lib}-ex", "arrow", None),
                    ("bare, default", bare, f"{lib}-bare", "arrow+examples", loaded),
                    ("bare, arrow", bare, f"{lib}-bare", "arrow", None),
                ):
                    rows = routed(hub, model, tok, lib, repos, tag, method, load)
                    routes[lib, label] = rows
                    if load:
                        bare_rows[lib] = rows
                    first = hit_rate(rows, lambda r: r["ranked"][0])
                    print(f"  {lib} {label}: first {first:.2f}", file=sys.stderr)
                mbc[lib] = mbc_rows(url, token, lib, bare, f"{lib}-bare")
    return routes, bare_rows, mbc


def worst_cell(cells: list[str]) -> str:
    """The smallest of each number in cells like "0.57 / 0.93" (first / top 3) or "0.35 (k=2)"."""
    numbers = [[float(x) for x in c.split(" (")[0].split(" / ")] for c in cells]
    return " / ".join(f"{min(column):.2f}" for column in zip(*numbers, strict=True))


def tables(folders: dict, model, tok, routes: dict, bare_rows: dict, mbc: dict) -> None:  # noqa: ANN001
    route_table, rerank_table, gain_table = [], [], []
    for lib in LIBRARIES:
        cells = []
        for label in ("examples, default", "examples, arrow", "bare, default", "bare, arrow"):
            rows = routes[lib, label]
            first = hit_rate(rows, lambda r: r["ranked"][0])
            top3 = sum(r["task"] in r["ranked"][:3] for r in rows) / len(rows)
            cells.append(f"{first:.2f} / {top3:.2f}")
        route_table.append([lib, *cells, *mbc[lib]])
        criterion, k = choose(bare_rows, lib)
        rows = bare_rows[lib]
        each = [f"{hit_rate(rows, lambda r, c=c, n=n: reranked(r, c, n)):.2f}" for c in CRITERIA for n in CANDIDATES]
        chosen = hit_rate(rows, lambda r, c=criterion, n=k: reranked(r, c, n))
        rerank_table.append([lib, f"{criterion}, top {k}", f"{chosen:.2f}", *each])
        picks = {
            "top-1 routed (merge_plan), bare": {},
            f"re-ranked ({criterion}, top {k}), bare": {},
            "top-1 routed (merge_plan), examples": {},
        }
        for r in rows:
            picks["top-1 routed (merge_plan), bare"].setdefault(r["task"], []).append((r["x"], r["ranked"][0]))
            picks[f"re-ranked ({criterion}, top {k}), bare"].setdefault(r["task"], []).append(
                (r["x"], reranked(r, criterion, k))
            )
        for r in routes[lib, "examples, default"]:
            picks["top-1 routed (merge_plan), examples"].setdefault(r["task"], []).append((r["x"], r["ranked"][0]))
        acc = recovery(model, tok, lib, folders[lib], picks)
        base, right = acc["base"], acc["right adapter"]
        for label, value in acc.items():
            share = (value - base) / (right - base) if right > base else float("nan")
            gain_table.append([lib, label, f"{value:.2f}", f"{share:.0%}"])
    worst = ["worst"] + [worst_cell([row[i] for row in route_table]) for i in range(1, len(route_table[0]))]
    print(f"\nSmolLM2-135M-Instruct, libraries {', '.join(LIBRARIES)} (9 adapters, 3 families each), {HELD_OUT} "
          "held-out inputs a task\n")  # fmt: skip
    print("Hub.route(messages=...): right adapter first / in the top 3; MBC (default method) ARI vs the families")
    heads = ["with examples, default", "with examples, arrow", "bare, default", "bare, arrow"]
    print(table(["library", *heads, "MBC k chosen", "MBC k=3"], route_table + [worst]))
    print("\nBare, the route's top candidates re-ranked with the user's model: right adapter first")
    print("(chosen: the criterion and count with the best worst-library top-1 on the OTHER two libraries)")
    each = [f"{c} top {n}" for c in CRITERIA for n in CANDIDATES]
    print(table(["library", "chosen on the others", "chosen, here", *each], rerank_table))
    print("\nExact match on the held-out inputs (mean over tasks) and share of the right adapter's gain")
    print(table(["library", "the model with", "exact match", "share of the gain"], gain_table))


if __name__ == "__main__":
    main()
