"""Real adapters in the forms PEFT writes besides plain LoRA: merged as PEFT merges them, and routed.

    python -m bench.bench_variants            # trains what is missing (~30 min on 2 cores), then ~10 min

SmolLM2-135M-Instruct and one task of each family of bench/tasks.py, each trained three ways with
PEFT (bench/real_library.py's recipe at half its steps, on all seven projections): plain LoRA, DoRA
(use_dora), and LoRA with a saved lm_head (modules_to_save=["lm_head"], the lm_head at a tenth of the
rate; SmolLM2 ties lm_head to the embedding, which PEFT's saved copy unties). For each adapter:

1. merge: exact match on 20 held-out inputs with the base model, with PEFT's merge_and_unload, and with
   quiver_hub.merge, and the largest difference between the two merged models' weights;
2. routing: each form's five adapters published bare (no description, no examples) on a real `quiver
   serve`, every held-out input routed with Hub.route(messages=...) on the default method and on the
   paper's Arrow: the right adapter first. A DoRA adapter's prototype is the top right singular
   vector of B A, the direction of its low-rank update (its magnitudes rescale rows, not inputs).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from bench.common import table
from bench.real_library import BASE_MODEL, Recipe, accuracy, load_model, train
from bench.tasks import FAMILIES, TASKS
from quiver_hub import Hub, merge, unmerge
from tests.support.servers import free_port, operator_token, serve_process

FORMS = {
    "LoRA": {},
    "DoRA": {"use_dora": True},
    "LoRA + saved lm_head": {"modules_to_save": ["lm_head"]},
}
RECIPE = Recipe(steps=60)
HELD_OUT = 20


def merge_rows(folders: dict[tuple[str, str], Path], held: dict) -> list[list[str]]:
    import peft

    model, tok = load_model()
    base = {name: accuracy(model, tok, TASKS[name], inputs) for name, inputs in held.items()}
    rows = []
    for (form, name), folder in folders.items():
        theirs = peft.PeftModel.from_pretrained(load_model()[0], folder).merge_and_unload()
        peft_acc = accuracy(theirs, tok, TASKS[name], held[name])
        merge(model, folder)
        ours = accuracy(model, tok, TASKS[name], held[name])
        mine, expected = model.state_dict(), theirs.state_dict()
        diff = max((mine[k].double() - expected[k].double()).abs().max().item() for k in expected)
        unmerge(model, free=True)
        rows.append([form, name, f"{base[name]:.2f}", f"{peft_acc:.2f}", f"{ours:.2f}", f"{diff:.1e}"])
        del theirs
    return rows


def routing_rows(folders: dict[tuple[str, str], Path], held: dict) -> list[list[str]]:
    model, tok = load_model()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    rows = []
    with tempfile.TemporaryDirectory() as home:
        env.update(QUIVER_HOME=home, QUIVER_PORT=str(free_port()))
        token = operator_token(env, "lib")
        with serve_process(env) as url, Hub(url, token, cache_dir=Path(home) / "cache") as hub:
            for i, form in enumerate(FORMS):
                repos = {}
                for (f, name), folder in folders.items():
                    if f == form:
                        repo = f"lib/form{i}-{name}"
                        bare = Path(home) / "bare" / repo  # weights and config only, as most public adapters
                        bare.mkdir(parents=True)
                        for file in ("adapter_config.json", "adapter_model.safetensors"):
                            (bare / file).symlink_to(folder / file)
                        hub.push(bare, repo, tags=[f"form{i}"])  # the tag keeps each form's library apart
                        repos[repo] = name
                hits = {"arrow+examples": 0, "arrow": 0}
                for method in hits:
                    for name, inputs in held.items():
                        for x in inputs:
                            messages = [{"role": "user", "content": TASKS[name].prompt(x)}]
                            ranked = hub.route(
                                model=model,
                                tokenizer=tok,
                                messages=messages,
                                method=method,
                                base_model=BASE_MODEL,
                                tags=[f"form{i}"],
                            )
                            hits[method] += bool(ranked) and repos.get(ranked[0]["id"]) == name
                total = sum(len(v) for v in held.values())
                rows.append([form, f"{hits['arrow+examples'] / total:.2f}", f"{hits['arrow'] / total:.2f}"])
    return rows


def main() -> None:
    os.nice(10)
    torch.manual_seed(0)
    names = [tasks[0].name for tasks in FAMILIES.values()]
    folders = {}
    for form, fields in FORMS.items():
        for name in names:
            model, tok = load_model()  # a fresh model for each: a saved lm_head must not leak into the next
            folders[form, name] = train(TASKS[name], RECIPE, model, tok, form=fields or None)
    held = {name: TASKS[name].split(RECIPE.train_examples, HELD_OUT, seed=RECIPE.seed)[1] for name in names}
    merges = merge_rows(folders, held)
    routes = routing_rows(folders, held)
    print(f"\nSmolLM2-135M-Instruct, {len(names)} tasks (one a family), {HELD_OUT} held-out inputs a task\n")
    print("Merged: exact match with the base model, PEFT's merge_and_unload and quiver_hub.merge")
    print(table(["form", "task", "base", "PEFT merged", "Quiver merged", "max |weight difference|"], merges))
    print("\nRouted, bare adapters (each form's library of five alone): right adapter first")
    print(table(["form", "Hub.route default (arrow+examples)", "Hub.route arrow (the paper's)"], routes))


if __name__ == "__main__":
    main()
