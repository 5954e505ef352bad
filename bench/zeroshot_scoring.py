"""Where bare routing loses on mixed libraries: an adapter's Arrow score averaged over every routed
module, as the hub does, or over the modules the adapter adapts.

    python -m bench.zeroshot_scoring         # ~10 min, after bench/libraries.py

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

from bench.common import table
from bench.libraries import LIBRARIES, adapters, split, train_library
from bench.real_library import load_model
from quiver_hub import Adapter, reference_means
from quiver_hub.local.capture import capture_inputs, chat_tokens

TOP_K = 3
# Variants of the score, for the leave-one-library-out table: what a logit is ("direction": |<h, v>| with
# v the top right singular vector, the hub's; "subspace": ||S V^T h|| / ||S|| over every singular
# direction of the delta, weighted by its singular values), how many adapters each token keeps (top k),
# and the softmax temperature. Each adapter's weight is averaged over its own modules.
KINDS = ("direction", "subspace")
TOP_KS = (1, 3, 9)
TEMPERATURES = (0.5, 1.0, 2.0)
VARIANTS = [(kind, k, T) for kind in KINDS for k in TOP_KS for T in TEMPERATURES]


def prototypes(folders: dict[str, Path]) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """module -> task -> (singular values / their norm, right singular vectors, r x in) of the dense delta;
    the first vector is the Arrow prototype."""
    out: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for name, folder in folders.items():
        for module, f in Adapter.load(folder).factors.items():
            _, s, vh = torch.linalg.svd(f.B.double() @ f.A.double(), full_matrices=False)
            r = f.A.shape[0]
            out.setdefault(module, {})[name] = ((s[:r] / s[:r].norm()).float(), vh[:r].float())
    return out


def token_weights(logits: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """Each candidate's weight averaged over the tokens: the top k logits of a token softmaxed."""
    top = logits.topk(min(k, logits.shape[1]), dim=1)
    return torch.zeros_like(logits).scatter(1, top.indices, torch.softmax(top.values / temperature, 1)).mean(0)


def ranking(summed: dict[str, float], count: dict[str, int], own: bool) -> list[str]:
    return sorted(summed, key=lambda n: -(summed[n] / count[n] if own else summed[n]))


def main() -> None:
    model, tok = load_model()
    rows, variant_hits = [], {}
    for library in LIBRARIES:
        protos = prototypes(train_library(library))
        modules = sorted(protos)
        means = reference_means(model, tok, modules, chat=True)
        hits = {"every module": 0, "own modules": 0, "every module, top 3": 0, "own modules, top 3": 0}
        first = dict.fromkeys(VARIANTS, 0)
        total = 0
        for t, recipe, _ in adapters(library):
            _, held = split(t, recipe)
            for x in held:
                ids, mask = chat_tokens(tok, [{"role": "user", "content": t.prompt(x)}])
                states = capture_inputs(model, tok, None, modules, input_ids=ids, mask=mask)
                summed = {v: {} for v in VARIANTS}
                count: dict[str, int] = {}
                for m in modules:
                    names = list(protos[m])
                    h = states[m] - means[m]
                    logits = {
                        "direction": (h @ torch.stack([protos[m][n][1][0] for n in names]).T).abs(),
                        "subspace": torch.stack(
                            [((h @ protos[m][n][1].T) * protos[m][n][0]).norm(dim=1) for n in names], dim=1
                        ),
                    }
                    for n in names:
                        count[n] = count.get(n, 0) + 1
                    for v in VARIANTS:
                        w = token_weights(logits[v[0]], v[1], v[2])
                        for n, weight in zip(names, w.tolist(), strict=True):
                            summed[v][n] = summed[v].get(n, 0.0) + weight
                hub = summed["direction", TOP_K, 1.0]
                every, own = ranking(hub, count, own=False), ranking(hub, count, own=True)
                hits["every module"] += every[0] == t.name
                hits["own modules"] += own[0] == t.name
                hits["every module, top 3"] += t.name in every[:3]
                hits["own modules, top 3"] += t.name in own[:3]
                for v in VARIANTS:
                    first[v] += ranking(summed[v], count, own=True)[0] == t.name
                total += 1
        rows.append([library, *(f"{v / total:.2f}" for v in hits.values())])
        variant_hits[library] = {v: n / total for v, n in first.items()}
        print(f"  {library}: {rows[-1][1:]}", file=sys.stderr)
    print("Bare adapters, Arrow centered, brute force: right adapter first (and in the top 3)")
    print(
        table(
            [
                "library",
                "score over every module (first round)",
                "over its own modules (the hub)",
                "every, top 3",
                "own, top 3",
            ],
            rows,
        )
    )
    print("\nThe score's kind, top k and temperature chosen leave-one-library-out (best worst-library first")
    print("on the other two), against the hub's (direction, top 3, T = 1): right adapter first")
    chosen_rows = []
    for library in LIBRARIES:
        others = [lib for lib in LIBRARIES if lib != library]
        best = max(
            variant_hits[library], key=lambda v: (min(variant_hits[o][v] for o in others), v == ("direction", 3, 1.0))
        )
        kind, k, temperature = best
        chosen_rows.append(
            [library, f"{kind}, top {k}, T = {temperature}", f"{variant_hits[library][best]:.2f}",
             f"{variant_hits[library]['direction', TOP_K, 1.0]:.2f}"]
        )  # fmt: skip
    print(table(["library", "chosen on the others", "chosen, here", "the hub's, here"], chosen_rows))
    print("\nEvery variant, right adapter first on B / C / D")
    print(
        table(
            ["kind", "top k", "T", *LIBRARIES],
            [[kind, k, T, *(f"{variant_hits[lib][kind, k, T]:.2f}" for lib in LIBRARIES)] for kind, k, T in VARIANTS],
        )
    )


if __name__ == "__main__":
    main()
