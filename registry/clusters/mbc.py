"""Model-based clustering (MBC, Ostapenko et al. 2024) of adapters, from their parameters.

Embeddings per adapter, then KMeans (k-means++, several restarts, fixed seed) on the rows of their
cosine-similarity matrix; k given, or chosen by silhouette. Sketches are compared over the modules two
adapters both adapt (similarity_rows), so a library of mixed forms is not grouped by form.
- "outputs-middle" (the default): "outputs" on the middle half of the layers only (layer numbers from
  the module names, `middle_layers`): on the real library the first and last quarters group adapters
  by how they format and read, not by task (bench/README.md: ARI 0.92 with k chosen, 0.72 on every layer);
- "outputs": what each delta writes (registry.lora.algebra.output_sketch: the Gram of the delta's
  outputs through a fixed projection, each module's block of unit norm), computed at publish; it groups
  related tasks better than the others on the real library (bench/README.md), because a LoRA's input
  side keeps much of its random initialisation;
- "sketch": the parameter sketches computed at publish (registry.lora.algebra.sketch), aligned module by
  module; invariant to re-factorising an adapter as (B M, M^-1 A), as "outputs" is.
- "params": the paper's recipe: every A and B entry flattened, the smallest entries zeroed
  (sparsity, default 0.5), TruncatedSVD to 64 dimensions (fewer with fewer adapters), L2-normalised.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from quiver_hub.registry.errors import InvalidRequest
from quiver_hub.registry.lora import algebra

METHODS = ("outputs-middle", "outputs", "sketch", "params")
K_RANGE = (2, 10)
RESTARTS = 10


@dataclass(frozen=True)
class Aligned:
    """Adapters' per-module sketch blocks at their modules' columns (zeros where one lacks a module), and
    each adapter's squared block norm per module: what "cosine over the modules two adapters share" needs
    (similarity_rows)."""

    blocks: np.ndarray  # n x (modules * block), float32
    norms: np.ndarray  # n x modules, float32: |block|^2, 0 where the adapter lacks the module

    def __len__(self) -> int:
        return self.blocks.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.blocks.shape

    def embeddings(self) -> np.ndarray:
        """The rows as one vector each, L2-normalised: their cosine is the similarity where every adapter
        adapts every module, and project_2d draws them."""
        return normalise_rows(self.blocks)


def sketch_matrix(
    sketches: Sequence[tuple[Sequence[str], np.ndarray]],
    block: int = algebra.SKETCH_P * algebra.SKETCH_Q,
    keep: Collection[str] | None = None,
) -> Aligned:
    """Aligned sketches (or output sketches, with their `block`): each adapter's per-module blocks placed
    at its modules' columns, so adapters with different target modules compare module by module; only
    the modules in `keep` when given."""
    names = {m for modules, _ in sketches for m in modules}
    columns = {m: i for i, m in enumerate(sorted(names if keep is None else names & set(keep)))}
    X = np.zeros((len(sketches), len(columns), block), dtype=np.float32)
    for row, (modules, vector) in enumerate(sketches):
        for j, module in enumerate(sorted(modules)):
            if module in columns:
                X[row, columns[module]] = vector[j * block : (j + 1) * block]
    return Aligned(X.reshape(len(sketches), -1), np.einsum("nmb,nmb->nm", X, X))


LAYER = re.compile(r"\.(\d+)\.")  # a module's layer: the first number between dots (model.layers.12.mlp.up_proj)


def middle_layers(modules: Iterable[str]) -> set[str]:
    """The modules of the middle half of the layers: layer l of n (n = the largest number seen + 1) with
    floor(n / 4) <= l < ceil(3 n / 4). Modules without a layer number are kept; so is every module of a
    model of one or two layers."""
    modules = set(modules)
    layers = {m: int(found.group(1)) for m in modules if (found := LAYER.search(m))}
    if not layers:
        return modules
    n = max(layers.values()) + 1
    low, high = n // 4, -(-3 * n // 4)
    return {m for m in modules if m not in layers or low <= layers[m] < high}


def params_matrix(
    adapters: Sequence[dict[str, algebra.Factors]], sparsity: float = 0.5, dims: int = 64, seed: int = 0
) -> np.ndarray:
    """The paper's parameter embedding: flattened A and B entries (aligned by module and factor),
    the smallest `sparsity` fraction of each adapter's entries zeroed, TruncatedSVD, L2-normalised."""
    from sklearn.decomposition import TruncatedSVD

    if not 0 <= sparsity < 1:
        raise InvalidRequest(f"sparsity must be in [0, 1), got {sparsity}")
    layout: dict[tuple[str, str], int] = {}
    for factors in adapters:
        for module, f in factors.items():
            for side, t in (("A", f.A), ("B", f.B)):
                layout[(module, side)] = max(layout.get((module, side), 0), t.numel())
    offsets, total = {}, 0
    for key in sorted(layout):
        offsets[key] = total
        total += layout[key]
    X = np.zeros((len(adapters), total), dtype=np.float32)
    for row, factors in enumerate(adapters):
        for module, f in factors.items():
            for side, t in (("A", f.A), ("B", f.B)):
                flat = t.detach().float().reshape(-1).numpy()
                start = offsets[(module, side)]
                X[row, start : start + flat.size] = flat
        if sparsity > 0:
            magnitude = np.abs(X[row])
            X[row, magnitude < np.quantile(magnitude, sparsity)] = 0.0
    components = min(dims, len(adapters) - 1, total - 1)
    if components < 1:
        return normalise_rows(X.astype(np.float64))
    reduced = TruncatedSVD(n_components=components, random_state=seed).fit_transform(X)
    return normalise_rows(reduced.astype(np.float64))


def project_2d(X: np.ndarray) -> np.ndarray:
    """Each adapter's embedding projected on the two principal directions of the run (for a picture of
    the library; the clustering itself uses every dimension)."""
    centred = X - X.mean(axis=0, keepdims=True)
    if centred.shape[0] < 2 or not np.any(centred):
        return np.zeros((X.shape[0], 2))
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    out = u[:, :2] * s[:2]
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def normalise_rows(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


@dataclass(frozen=True)
class Partition:
    labels: np.ndarray  # cluster index per adapter
    distances: np.ndarray  # each adapter's distance to its cluster's centre (similarity-row space)
    k: int
    silhouette: float | None


# Up to this many adapters MBC is the paper's recipe exactly: k-means on the rows of the n x n similarity
# matrix (20,000: 1.6 GB of float32). Beyond, the rows are approximated by their columns at LANDMARKS
# adapters (Nystrom: n x m, never n x n), which agrees with the exact recipe where both run
# (bench/bench_clusters.py, tests/api/test_clusters.py).
EXACT_MAX = 20_000
LANDMARKS = 1_000
SILHOUETTE_SAMPLE = 5_000


SIMILARITY_CHUNK = 2048  # rows of S computed at a time: the shared-module norms are this many x n


def similarity_rows(embeddings: np.ndarray | Aligned, seed: int, exact_max: int = EXACT_MAX) -> np.ndarray:
    """What k-means clusters: every row of S (n x n) while n <= exact_max, else each adapter's
    similarities to LANDMARKS adapters drawn at random (n x m). S is the cosine of the embeddings; of
    aligned sketches, the cosine over the modules both adapters adapt (0 with none in common), so an
    adapter of the attention projections, or of the top layers, is compared with one of every module on
    what both change, not counted unlike it for the modules it lacks (bench/zeroshot_clusters.py). Where
    every adapter adapts every module the two are the same."""
    n = len(embeddings)
    columns = np.arange(n)
    if n > exact_max:
        columns = np.sort(np.random.default_rng(seed).choice(n, size=min(LANDMARKS, n), replace=False))
    if isinstance(embeddings, np.ndarray):
        E = embeddings.astype(np.float32)
        return E @ E[columns].T
    X, Q = embeddings.blocks, embeddings.norms
    present = (Q > 0).astype(np.float32)
    if present.all():  # one form: the cosine of whole rows
        E = embeddings.embeddings()
        return E @ E[columns].T
    S = np.empty((n, len(columns)), dtype=np.float32)
    for start in range(0, n, SIMILARITY_CHUNK):
        rows = slice(start, start + SIMILARITY_CHUNK)
        mine = Q[rows] @ present[columns].T  # |i's blocks|^2 over the modules j adapts
        theirs = present[rows] @ Q[columns].T
        S[rows] = X[rows] @ X[columns].T / np.sqrt(np.maximum(mine * theirs, 1e-30))
    return S


def cluster(
    embeddings: np.ndarray | Aligned,
    k: int | None = None,
    seed: int = 0,
    k_range: tuple[int, int] = K_RANGE,
    progress: Callable[[float], None] = lambda _: None,
    exact_max: int = EXACT_MAX,
) -> Partition:
    """KMeans on the rows of the cosine-similarity matrix (landmark columns past `exact_max` adapters);
    k by silhouette (on a sample of at most SILHOUETTE_SAMPLE adapters) when not given."""
    n = len(embeddings)
    if n < 2:
        raise InvalidRequest(f"clustering needs at least 2 adapters; {n} match")
    if k is not None and not 1 <= k <= n:
        raise InvalidRequest(f"k must be between 1 and the number of adapters ({n}), got {k}")
    return cluster_similarities(similarity_rows(embeddings, seed, exact_max), k, seed, k_range, progress)


def cluster_similarities(
    S: np.ndarray,
    k: int | None = None,
    seed: int = 0,
    k_range: tuple[int, int] = K_RANGE,
    progress: Callable[[float], None] = lambda _: None,
) -> Partition:
    """KMeans on the rows of S (each adapter's similarities to the others, or to landmark adapters)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n = S.shape[0]
    candidates = [k] if k is not None else list(range(k_range[0], min(k_range[1], n - 1) + 1)) or [1]
    best: tuple[float, KMeans] | None = None
    for i, kk in enumerate(candidates):
        model = KMeans(n_clusters=kk, init="k-means++", n_init=RESTARTS, random_state=seed).fit(S)
        distinct = len(set(model.labels_))
        score = (
            float(silhouette_score(S, model.labels_, sample_size=min(n, SILHOUETTE_SAMPLE), random_state=seed))
            if 1 < distinct < n
            else float("-inf")
        )
        if best is None or score > best[0]:
            best = (score, model)
        progress((i + 1) / len(candidates))
    score, model = best
    distances = np.linalg.norm(S - model.cluster_centers_[model.labels_], axis=1)
    return Partition(model.labels_.astype(int), distances, int(model.n_clusters), score if np.isfinite(score) else None)
