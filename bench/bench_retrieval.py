"""Retrieval on a real library: does the hub find the adapter that helps?

    python -m bench.bench_retrieval            # trains what is missing (bench/real_library.py), ~20 min

The library: SmolLM2-135M-Instruct and one LoRA adapter per task of bench/tasks.py (5 families of 3
related tasks), published on a real `quiver serve` with their card, task name and a few example
inputs, as users publish. Every held-out input (20 a task, never seen in training) is then routed every
way a user can, the library is clustered, and the model answers with what each recipe picks:

1. the right adapter first / in the top 3, for each way of asking;
2. MBC's adjusted Rand index against the families, each embedding, k given and chosen;
3. exact match of the answers: the base model, the right adapter, the top-1 routed adapter, the merge
   Routing.merge_plan() recommends, the old recipe (every hit merged, weighted by its score),
   apply_arrow over the whole library (plain and centered) and a uniform merge of all; each also as a
   share of the right adapter's gain over the base model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import torch

from bench.common import table
from bench.real_library import BASE_MODEL, Recipe, chat, generate, library, load_model
from bench.tasks import FAMILIES, TASKS
from quiver_hub import Adapter, Hub, apply_arrow, merged, reference_means, remove_arrow
from quiver_hub.local.capture import capture_inputs, chat_tokens
from tests.support.servers import free_port, operator_token, serve_process

WAYS = [
    ("Hub.route, chat messages, arrow+examples (default)", "messages", "arrow+examples"),
    ("Hub.route, chat messages, arrow-centered", "messages", "arrow-centered"),
    ("Hub.route, chat messages, arrow (the paper's)", "messages", "arrow"),
    ("Hub.route, whole chat template, arrow", "template", "arrow"),
    ("Hub.route, bare prompt, arrow-centered", "text", "arrow-centered"),
    ("Hub.route, bare prompt, arrow", "text", "arrow"),
    ("/v1/route/text", "route_text", None),
    ("/v1/search", "search", None),
]


def publish_library(hub: Hub, folders: dict[str, Path]) -> dict[str, str]:
    """repo id per task."""
    repos = {}
    for name, folder in folders.items():
        task = TASKS[name]
        repo = f"lib/{name}"
        hub.push(folder, repo, description=task.description, task=name, tags=[task.family])
        repos[name] = repo
    return repos


def route_one(hub: Hub, model, tok, prompt: str, way: str, method: str | None) -> list[dict]:  # noqa: ANN001
    messages = [{"role": "user", "content": prompt}]
    if way == "messages":
        return hub.route(model=model, tokenizer=tok, messages=messages, method=method, limit=15)
    if way == "template":
        ids = chat(tok, prompt)
        return hub.route(model=model, tokenizer=tok, input_ids=ids, mask=[True] * len(ids), method=method, limit=15)
    if way == "text":
        return hub.route(model=model, tokenizer=tok, text=prompt, method=method, limit=15)
    if way == "route_text":
        return hub.route_text(prompt, base_model=BASE_MODEL, limit=15)
    return hub.search(prompt, base_model=BASE_MODEL, limit=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held-out", type=int, default=20)
    parser.add_argument(
        "--only",
        choices=["routing", "modules", "clusters"],
        help="one part (end to end needs the routing part's picks)",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    folders = library()
    model, tok = load_model()
    recipe = Recipe()
    held = {name: TASKS[name].split(recipe.train_examples, args.held_out, seed=recipe.seed)[1] for name in folders}
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    with tempfile.TemporaryDirectory() as home:
        env.update(QUIVER_HOME=home, QUIVER_PORT=str(free_port()))
        token = operator_token(env, "lib")
        with serve_process(env) as url, Hub(url, token, cache_dir=Path(home) / "cache") as hub:
            repos = publish_library(hub, folders)
            by_repo = {r: n for n, r in repos.items()}
            print(f"published {len(repos)} adapters on {url}", file=sys.stderr)
            routing_rows = module_rows = mbc_rows = e2e_rows = None
            if args.only in (None, "routing"):
                routing_rows, picks = route_all(hub, model, tok, held, by_repo)
            if args.only in (None, "modules"):
                module_rows = route_by_modules(hub, model, tok, held, by_repo)
            if args.only in (None, "clusters"):
                mbc_rows = cluster_all(url, token, by_repo)
            if args.only is None:
                e2e_rows = end_to_end(hub, model, tok, folders, held, picks, repos)
    print(
        f"\nSmolLM2-135M-Instruct, {len(folders)} adapters in {len(FAMILIES)} families, {args.held_out} held-out "
        "inputs a task\n"
    )
    if routing_rows:
        print("Right adapter first / in the top 3, every way a user asks")
        print(table(["way", "first", "top 3"], routing_rows))
    if module_rows:
        print(
            "\nWhich modules carry the signal: chat messages routed on a subset of the modules, arrow-centered and "
            "arrow+examples, right adapter first / in the top 3; and the float32 prototypes the hub would hold "
            "per Llama-2-7B-shaped adapter (32 layers; q, k, v, o, gate, up 4096 wide, down 11008) for the same subset"
        )
        columns = ["centered first", "centered top 3", "+examples first", "+examples top 3"]
        print(table(["modules routed", "modules", *columns, "prototypes / 7B adapter (KiB)"], module_rows))
    if mbc_rows:
        print("\nMBC: adjusted Rand index of the clusters against the families")
        print(table(["embedding", "k given (5)", "k chosen (k, silhouette)"], mbc_rows))
    if e2e_rows:
        print(
            "\nEnd to end: exact match on the held-out inputs (mean over tasks), and the share of the right "
            "adapter's gain over the base model"
        )
        print(table(["the model with", "exact match", "share of the gain"], e2e_rows))


def route_all(hub: Hub, model, tok, held: dict, by_repo: dict) -> tuple[list, dict]:  # noqa: ANN001
    rows, picks = [], {}
    for label, way, method in WAYS:
        first = top3 = total = 0
        started = time.perf_counter()
        for name, inputs in held.items():
            for x in inputs:
                results = route_one(hub, model, tok, TASKS[name].prompt(x), way, method)
                ranked = [by_repo.get(r["id"]) for r in results]
                first += ranked[:1] == [name]
                top3 += name in ranked[:3]
                total += 1
                if way == "messages" and method == "arrow+examples":
                    picks[(name, x)] = results
        rows.append([label, f"{first / total:.2f}", f"{top3 / total:.2f}"])
        print(
            f"  {label}: {first / total:.2f} / {top3 / total:.2f} ({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
        )
    return rows, picks


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def module_subsets(modules: list[str]) -> list[tuple[str, list[str]]]:
    """Named subsets of the adapted modules: each kind of projection, attention, MLP, thirds of the layers."""
    layer = {m: int(m.split(".layers.")[1].split(".")[0]) for m in modules}
    n = max(layer.values()) + 1
    subsets = [("all", modules)]
    subsets += [(p, [m for m in modules if m.endswith(p)]) for p in PROJECTIONS]
    subsets += [("attention (q, k, v, o)", [m for m in modules if ".self_attn." in m])]
    subsets += [("MLP (gate, up, down)", [m for m in modules if ".mlp." in m])]
    for i, third in enumerate(("first", "middle", "last")):
        subsets.append(
            (f"{third} third of the layers", [m for m in modules if i * n // 3 <= layer[m] < (i + 1) * n // 3])
        )
    subsets += [("every 4th layer", [m for m in modules if layer[m] % 4 == 0])]
    subsets += [("q_proj, every 4th layer", [m for m in modules if m.endswith("q_proj") and layer[m] % 4 == 0])]
    return [(label, sorted(ms)) for label, ms in subsets if ms]


def kib_7b(subset: list[str], modules: list[str]) -> float:
    """Float32 prototype KiB per Llama-2-7B-shaped adapter on the same share of layers and projections."""
    layers = len({m.split(".layers.")[1].split(".")[0] for m in subset}) / len(
        {m.split(".layers.")[1].split(".")[0] for m in modules}
    )
    kinds = {p for p in PROJECTIONS for m in subset if m.endswith(p)}
    per_layer = sum(11008 if p == "down_proj" else 4096 for p in kinds) * 4 / 1024
    return per_layer * layers * 32


def route_by_modules(hub: Hub, model, tok, held: dict, by_repo: dict) -> list:  # noqa: ANN001
    """Centered hidden states captured once per input (the chat's last user message), routed with each
    subset alone (arrow-centered) and with the input's words (arrow+examples, the default)."""
    modules = sorted(hub.route_modules(BASE_MODEL)["modules"])
    means = reference_means(model, tok, modules, chat=True)
    states = {}
    for name, inputs in held.items():
        for x in inputs:
            prompt = TASKS[name].prompt(x)
            ids, mask = chat_tokens(tok, [{"role": "user", "content": prompt}])
            captured = capture_inputs(model, tok, None, modules, input_ids=ids, mask=mask)
            states[(name, prompt)] = {m: h - means[m].to(h.device, h.dtype) for m, h in captured.items()}
    rows = []
    for label, subset in module_subsets(modules):
        counts = defaultdict(int)
        for (name, prompt), hidden in states.items():
            for method in ("arrow-centered", "arrow+examples"):
                words = prompt if method == "arrow+examples" else None
                results = hub.route(
                    {m: hidden[m] for m in subset}, base_model=BASE_MODEL, limit=15, method=method, text=words
                )
                ranked = [by_repo.get(r["id"]) for r in results]
                counts[(method, "first")] += ranked[:1] == [name]
                counts[(method, "top 3")] += name in ranked[:3]
        cells = [
            f"{counts[(m, c)] / len(states):.2f}"
            for m in ("arrow-centered", "arrow+examples")
            for c in ("first", "top 3")
        ]
        rows.append([label, str(len(subset)), *cells, f"{kib_7b(subset, modules):,.0f}"])
        print(f"  modules {label}: " + " / ".join(cells), file=sys.stderr)
    return rows


def cluster_all(url: str, token: str, by_repo: dict) -> list:
    from sklearn.metrics import adjusted_rand_score

    rows = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600) as c:
        for method in ("outputs-middle", "outputs", "sketch", "params"):
            cells = []
            for k in (len(FAMILIES), None):
                body = {"base_model": BASE_MODEL, "method": method, **({"k": k} if k else {})}
                run = c.post("/v1/clusters", json=body).json()
                members = [(by_repo[m["id"]], cl["index"]) for cl in run["clusters"] for m in cl["members"]]
                ari = adjusted_rand_score([TASKS[n].family for n, _ in members], [i for _, i in members])
                cells.append(f"{ari:.2f}" + ("" if k else f" (k={run['k']}, {run['silhouette']:.2f})"))
            rows.append([method, *cells])
    return rows


def accuracy(model, tok, name: str, inputs: list) -> float:  # noqa: ANN001
    task = TASKS[name]
    answers = generate(model, tok, [task.prompt(x) for x in inputs])
    return sum(a == task.answer(x) for a, x in zip(answers, inputs, strict=True)) / len(inputs)


def grouped_accuracy(model, tok, name: str, inputs: list, plans: list, loaded: dict) -> float:  # noqa: ANN001
    """Exact match when each input is answered with its own merge plan (inputs sharing a plan together)."""
    groups: dict[tuple, list] = defaultdict(list)
    for x, plan in zip(inputs, plans, strict=True):
        groups[tuple(plan)].append(x)
    correct = 0
    for plan, xs in groups.items():
        with merged(model, [loaded[spec.split("@")[0]] for spec, _ in plan], [w for _, w in plan]):
            correct += accuracy(model, tok, name, xs) * len(xs)
    return correct / len(inputs)


def end_to_end(hub: Hub, model, tok, folders: dict, held: dict, picks: dict, repos: dict) -> list:  # noqa: ANN001
    loaded = {repos[n]: Adapter.load(f) for n, f in folders.items()}
    everyone = list(loaded.values())
    results: dict[str, list[float]] = defaultdict(list)
    modules = sorted({m for a in everyone for m in a.factors})
    for name, inputs in held.items():
        results["base model"].append(accuracy(model, tok, name, inputs))
        with merged(model, loaded[repos[name]]):
            results["the right adapter"].append(accuracy(model, tok, name, inputs))
        routed = [picks[(name, x)] for x in inputs]
        top1 = [[(f"{r[0]['id']}@{r[0]['revision']}", 1.0)] for r in routed]
        results["top-1 routed, merged"].append(grouped_accuracy(model, tok, name, inputs, top1, loaded))
        plans = [r.merge_plan() for r in routed]
        results["Routing.merge_plan() (recommended)"].append(grouped_accuracy(model, tok, name, inputs, plans, loaded))
        weighted = [[(f"{h['id']}@{h['revision']}", h["score"]) for h in r] for r in routed]
        results["every hit, weighted by its score"].append(grouped_accuracy(model, tok, name, inputs, weighted, loaded))
        with merged(model, everyone, [1.0 / len(everyone)] * len(everyone)):
            results["uniform merge of all"].append(accuracy(model, tok, name, inputs))
        means = reference_means(model, tok, modules)
        for label, center in (("apply_arrow, whole library", None), ("apply_arrow, whole library, centered", means)):
            apply_arrow(model, everyone, top_k=3, center=center)
            try:
                results[label].append(accuracy(model, tok, name, inputs))
            finally:
                remove_arrow(model)
        # Token-level mixing that leans on what the whole input was routed to: Hub.route's scores as the
        # prior (one apply per input, since each input has its own answer).
        for label, hits in (
            ("apply_arrow, whole library, centered, route scores as prior", 15),
            ("apply_arrow, route's top 3, centered, scores as prior", 3),
        ):
            correct = 0
            for x, answer in zip(inputs, routed, strict=True):
                chosen = {h["id"]: h["score"] for h in answer[:hits]}
                prior = [chosen.get(repo, 0.0) for repo in loaded]
                apply_arrow(model, everyone, top_k=3, center=means, prior=prior)
                try:
                    correct += accuracy(model, tok, name, [x])
                finally:
                    remove_arrow(model)
            results[label].append(correct / len(inputs))
        print(f"  {name}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in results.items()), file=sys.stderr)
    base, right = statistics.mean(results["base model"]), statistics.mean(results["the right adapter"])
    rows = []
    for label, values in results.items():
        mean = statistics.mean(values)
        share = (mean - base) / (right - base) if right > base else float("nan")
        rows.append([label, f"{mean:.2f}", f"{share:.0%}"])
    return rows


if __name__ == "__main__":
    main()
