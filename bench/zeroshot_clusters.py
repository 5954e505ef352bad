"""What MBC's similarity should compare on libraries of mixed forms: the hub's default and the variants,
by the adjusted Rand index of their partitions against the families (and against the forms).

    python -m bench.zeroshot_clusters        # ~2 min, after bench/libraries.py

Every adapter's embeddings are computed as the hub computes them at publish
(registry.intake.analysis.analyse_weights); the partitions are registry.clusters.mbc's k-means with k chosen by
silhouette and with k = 3. Variants of what two adapters' similarity is taken over:
- "outputs-middle" (the hub's default) and "outputs": the output sketches on the middle half of the
  model's layers, or on every layer, compared as the hub compares them: the cosine over the modules both
  adapters adapt (registry.clusters.mbc.similarity_rows);
- "... every-module cosine (before)": the hub's similarity before that, the cosine of whole rows with a
  module one adapter lacks counted as zeros, so adapters of one form look alike;
- "outputs, own middle": on the middle half of each adapter's own layers (of the top eight: 24-27);
- "sketch", and "params" (the paper's recipe) at the hub's sparsity 0.5 and at MTTL's 0.8;
- the paper authors' own MBC (MTTL, bench/mttl_peer.py) at k = 3, on the adapters as they are and on the
  union of their tensors' layout.
Random partitions of the same sizes give the ARI that means nothing.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from bench import mttl_peer
from bench.common import table
from bench.libraries import LIBRARIES, adapters, describe, train_library
from quiver_hub.registry.clusters import mbc
from quiver_hub.registry.intake.analysis import analyse_weights
from quiver_hub.registry.lora import algebra, peft_format


def every_module(aligned: mbc.Aligned) -> np.ndarray:
    """The hub's similarity before it compared adapters over the modules they share: the cosine of whole
    rows, a module one adapter lacks counting as zeros."""
    return mbc.normalise_rows(aligned.blocks)


def own_middle(sketches: list[tuple[list[str], np.ndarray]], block: int) -> list[tuple[list[str], np.ndarray]]:
    """Each adapter's sketch on the middle half of its own layers (of layers 22-29: 24-27)."""
    out = []
    for modules, vector in sketches:
        layers = sorted({int(found.group(1)) for m in modules if (found := mbc.LAYER.search(m))})
        middle = set(layers[len(layers) // 4 : -(-3 * len(layers) // 4)])
        keep = [j for j, m in enumerate(modules) if (found := mbc.LAYER.search(m)) and int(found.group(1)) in middle]
        out.append(([modules[j] for j in keep], np.concatenate([vector[j * block : (j + 1) * block] for j in keep])))
    return out


def library_sketches(library: str) -> tuple[list, list, list, list]:
    """(bench.libraries.adapters, and per adapter in that order: (modules, output sketch), (modules,
    sketch), factors), the sketches as the hub computes them at publish."""
    folders = train_library(library)
    items = adapters(library)
    outputs, sketches, factors = [], [], []
    for t, _, _ in items:
        folder = folders[t.name]
        config = json.loads((folder / "adapter_config.json").read_text())
        weights = folder / algebra.WEIGHTS_FILE
        _, sketch, out = analyse_weights(weights, config)
        f = peft_format.read(weights, config).factors
        modules = sorted(f)
        outputs.append((modules, out))
        sketches.append((modules, sketch))
        factors.append(f)
    return items, outputs, sketches, factors


DRAWS = 5


def draw_outputs(factors: list[dict[str, algebra.Factors]], draw: int) -> list[tuple[list[str], np.ndarray]]:
    """Each adapter's (modules, output sketch) with the Gaussians of another draw (algebra.SKETCH_DRAW)."""
    hub = algebra.SKETCH_DRAW
    algebra.SKETCH_DRAW = draw
    try:
        return [(sorted(f), algebra.output_sketch(f)) for f in factors]
    finally:
        algebra.SKETCH_DRAW = hub


def partitions(embeddings: np.ndarray | mbc.Aligned) -> list[np.ndarray]:
    """Labels with k chosen and with k = 3."""
    return [mbc.cluster(embeddings, k).labels for k in (None, 3)]


def main() -> None:
    from sklearn.metrics import adjusted_rand_score

    rows, form_rows, draws = [], [], []
    peer = mttl_peer.partitions({lib: [train_library(lib)[t.name] for t, _, _ in adapters(lib)] for lib in LIBRARIES})
    for library in LIBRARIES:
        items, outputs, sketches, factors = library_sketches(library)
        family = [t.family for t, _, _ in items]
        form = [describe(r, f).split(",")[1] + (" top 8" if f.get("layers_to_transform") else "") for _, r, f in items]
        block = algebra.output_block()
        everything = {m for modules, _ in outputs for m in modules}
        variants = {
            "outputs-middle, every-module cosine (before)": partitions(
                every_module(mbc.sketch_matrix(outputs, block, mbc.middle_layers(everything)))
            ),
            "outputs, every-module cosine (before)": partitions(every_module(mbc.sketch_matrix(outputs, block))),
            "outputs-middle (hub)": partitions(mbc.sketch_matrix(outputs, block, mbc.middle_layers(everything))),
            "outputs (hub)": partitions(mbc.sketch_matrix(outputs, block)),
            "outputs, own middle": partitions(mbc.sketch_matrix(own_middle(outputs, block), block)),
            "sketch (hub)": partitions(mbc.sketch_matrix(sketches)),
            "params 0.5": partitions(mbc.params_matrix(factors, sparsity=0.5)),
            "params 0.8": partitions(mbc.params_matrix(factors, sparsity=0.8)),
        }
        rng = np.random.default_rng(0)
        chance = sorted(adjusted_rand_score(family, rng.permutation(np.arange(len(family)) % 3)) for _ in range(1000))
        rows.append([library, "random partitions of 3 x 3: mean, 95th percentile", "", f"{np.mean(chance):.2f}, "
                     f"{chance[949]:.2f}"])  # fmt: skip
        for name, (chosen, three) in variants.items():
            ari = [adjusted_rand_score(family, labels) for labels in (chosen, three)]
            rows.append([library, name, f"{ari[0]:.2f} (k={len(set(chosen))})", f"{ari[1]:.2f}"])
            form_rows.append([library, name, f"{adjusted_rand_score(form, three):.2f}"])
        for given, said in peer[library].items():
            name = f"MTTL's MBCWithCosSimTransform (the paper's code), {given}"
            if "labels" in said:
                rows.append([library, name, "-", f"{adjusted_rand_score(family, said['labels']):.2f}"])
                form_rows.append([library, name, f"{adjusted_rand_score(form, said['labels']):.2f}"])
            else:
                rows.append([library, name, "-", f"fails: {said['error']}"])
        ari = []
        for draw in range(algebra.SKETCH_DRAW, algebra.SKETCH_DRAW + DRAWS):
            X = mbc.sketch_matrix(draw_outputs(factors, draw), block, mbc.middle_layers(everything))
            ari.append(adjusted_rand_score(family, mbc.cluster(X, 3).labels))
        draws.append([library, " ".join(f"{a:.2f}" for a in ari), f"{np.mean(ari):.2f}", f"{np.std(ari):.2f}"])
        print(f"  {library} done", file=sys.stderr)
    print("MBC on bench/libraries.py's libraries (bare adapters): ARI against the families")
    print(table(["library", "similarity", "k chosen", "k = 3"], rows))
    print(f"\n`outputs-middle` at k = 3 with {DRAWS} draws of the output sketches' Gaussians (the hub's is the first)")
    print(table(["library", "ARI of each draw", "mean", "std"], draws))
    print("\nThe same k = 3 partitions: ARI against the forms (targets, top eight layers or all)")
    print(table(["library", "similarity", "k = 3 vs forms"], form_rows))


if __name__ == "__main__":
    main()
