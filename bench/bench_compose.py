"""Few-shot composition on the real library: a handful of examples of a task no library adapter was
trained on, and what each recipe makes of them.

    python -m bench.bench_compose [--shots 5,20] [--tasks list-first,weekday-before,lowercase,add-three]
                                  [--families arithmetic,lists,calendar,spelling,labels]

For each held-out task of bench/tasks.py and each number of examples: exact match on 20 held-out inputs
of the base model, the best single library adapter (the one with the lowest loss on the examples; the
best on the test inputs in brackets, an oracle), a uniform merge of the library, LoraHub's recipe
(compose(method="lorahub"): gradient-free, A and B combined apart), ours (compose(): gradients through
the unmerged adapters, the exact weighted sum), and a LoRA adapter trained on the same few examples;
with the wall time each took.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from bench.common import table
from bench.real_library import Recipe, accuracy, library, load_model, train
from bench.tasks import FAMILIES, HELD_OUT_TASKS
from quiver_hub import Adapter, compose, merged
from quiver_hub.local.composition import answer_loss, example_batch

TEST = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", default="5,20")
    parser.add_argument("--tasks", default=",".join(HELD_OUT_TASKS))
    parser.add_argument("--families", default=",".join(FAMILIES), help="the library: these families' adapters")
    args = parser.parse_args()
    torch.manual_seed(0)
    folders = library(tasks=[t.name for f in args.families.split(",") for t in FAMILIES[f]])
    model, tok = load_model()
    adapters = [Adapter.load(f) for f in folders.values()]
    rows = []
    for name in args.tasks.split(","):
        task = HELD_OUT_TASKS[name]
        for shots in (int(s) for s in args.shots.split(",")):
            train_inputs, test = task.split(shots, TEST, seed=0)
            examples = task.examples(train_inputs[:shots])
            cells, times = {}, {}
            cells["base"] = accuracy(model, tok, task, test)
            t = time.perf_counter()
            batch = example_batch(tok, examples, chat=True)
            losses = []
            for a in adapters:
                with torch.no_grad(), merged(model, a):
                    losses.append(float(answer_loss(model, batch)))
            chosen = adapters[min(range(len(adapters)), key=losses.__getitem__)]
            times["best single"] = time.perf_counter() - t
            with merged(model, chosen):
                cells["best single"] = accuracy(model, tok, task, test)
            oracle = 0.0
            for a in adapters:
                with merged(model, a):
                    oracle = max(oracle, accuracy(model, tok, task, test))
            with merged(model, adapters, [1 / len(adapters)] * len(adapters)):
                cells["uniform"] = accuracy(model, tok, task, test)
            for label, method in (("LoraHub", "lorahub"), ("composed (ours)", "gradient")):
                result = compose(model, tok, adapters, examples, method=method)
                times[label] = result.seconds
                composed = Adapter("composed", {"r": 1}, result.factors())
                with merged(model, composed):
                    cells[label] = accuracy(model, tok, task, test)
                print(
                    f"  {name} {shots} shots {label}: weights {[round(w, 2) for w in result.weights]}", file=sys.stderr
                )
            t = time.perf_counter()
            recipe = Recipe(steps=max(30, 3 * shots), train_examples=shots, batch=min(8, shots))
            folder = train(task, recipe, model, tok, examples=examples)
            times["trained on the examples"] = time.perf_counter() - t
            with merged(model, folder):
                cells["trained on the examples"] = accuracy(model, tok, task, test)
            print(f"  {name} {shots}: {cells} {times}", file=sys.stderr)
            rows.append(
                [
                    name,
                    shots,
                    f"{cells['base']:.2f}",
                    f"{cells['best single']:.2f} ({oracle:.2f})",
                    f"{cells['uniform']:.2f}",
                    f"{cells['LoraHub']:.2f} ({times['LoraHub']:.0f} s)",
                    f"{cells['composed (ours)']:.2f} ({times['composed (ours)']:.0f} s)",
                    f"{cells['trained on the examples']:.2f} ({times['trained on the examples']:.0f} s)",
                ]
            )
    print(f"\nSmolLM2-135M-Instruct, a library of {len(adapters)} adapters; exact match on {TEST} held-out inputs")
    print(
        table(
            [
                "task",
                "examples",
                "base",
                "best single (oracle)",
                "uniform merge",
                "LoraHub (time)",
                "composed, ours (time)",
                "LoRA trained on them (time)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
