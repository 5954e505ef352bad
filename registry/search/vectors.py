"""float32 vectors to and from the bytes stored in the database."""

from __future__ import annotations

import numpy as np


def to_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4").copy()


def normalised_mean(rows: np.ndarray) -> np.ndarray:
    mean = rows.mean(axis=0)
    norm = np.linalg.norm(mean)
    return (mean / norm if norm > 0 else mean).astype(np.float32)
