"""Where bare routing loses on mixed libraries: an adapter's Arrow score averaged over every routed
module, as the hub does, or over the modules the adapter adapts.

    python bench/zeroshot_scoring.py         # ~3 min, after bench/libraries.py

A brute force of the hub's formula (docs/architecture.md, "Finding adapters": centered states, |<h, v>|,
top 3 per token softmaxed, averaged over tokens), on prototypes computed here from each adapter's dense
delta, for bench/libraries.py's three libraries and their held-out chats. "every module" reproduces the
hub's bare `arrow-centered` ranking; "own modules" divides each adapter's sum by the number of modules it
adapts, so an attention-only or top-eight-layers adapter is not outvoted by one on every projection of
every layer for having fewer modules.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import table  # noqa: E402
from bench.libraries import LIBRARIES, adapters, split, train_library  # noqa: E402
from bench.real_library import load_model  # noqa: E402
from quiver_hub import Adapter, reference_means  # noqa: E402
from quiver_hub.capture import capture_inputs, chat_tokens  # noqa: E402

TOP_K = 3


def prototypes(folders: dict[str, Path]) -> dict[str, dict[str, torch.Tensor]]:
    """module -> task -> the top right singular vector of the dense delta."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, folder in folders.items():
        for module, f in Adapter.load(folder).factors.items():
            delta = f.B.double() @ f.A.double()
            out.setdefault(module, {})[name] = torch.linalg.svd(delta, full_matrices=False).Vh[0].float()
    return out


def main() -> None:
    model, tok = load_model()
    rows = []
    for library in LIBRARIES:
        protos = prototypes(train_library(library))
        modules = sorted(protos)
        means = reference_means(model, tok, modules, chat=True)
        hits = {"every module": 0, "own modules": 0, "every module, top 3": 0, "own modules, top 3": 0}
        total = 0
        for t, recipe, _ in adapters(library):
            _, held = split(t, recipe)
            for x in held:
                ids, mask = chat_tokens(tok, [{"role": "user", "content": t.prompt(x)}])
                states = capture_inputs(model, tok, None, modules, input_ids=ids, mask=mask)
                summed: dict[str, float] = {}
                count: dict[str, int] = {}
                for m in modules:
                    names = list(protos[m])
                    logits = ((states[m] - means[m]) @ torch.stack([protos[m][n] for n in names]).T).abs()
                    top = logits.topk(min(TOP_K, len(names)), dim=1)
                    w = torch.zeros_like(logits).scatter(1, top.indices, torch.softmax(top.values, 1)).mean(0)
                    for n, weight in zip(names, w.tolist(), strict=True):
                        summed[n] = summed.get(n, 0.0) + weight
                        count[n] = count.get(n, 0) + 1
                every = sorted(summed, key=lambda n: -summed[n])
                own = sorted(summed, key=lambda n: -summed[n] / count[n])
                hits["every module"] += every[0] == t.name
                hits["own modules"] += own[0] == t.name
                hits["every module, top 3"] += t.name in every[:3]
                hits["own modules, top 3"] += t.name in own[:3]
                total += 1
        rows.append([library, *(f"{v / total:.2f}" for v in hits.values())])
        print(f"  {library}: {rows[-1][1:]}", file=sys.stderr)
    print("Bare adapters, Arrow centered, brute force: right adapter first (and in the top 3)")
    print(
        table(
            ["library", "score over every module (the hub)", "over its own modules", "every, top 3", "own, top 3"], rows
        )
    )


if __name__ == "__main__":
    main()
