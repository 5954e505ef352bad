"""The PEFT LoRA format and the low-rank algebra.

Imports only the standard library, torch, safetensors and numpy: the thin client imports it too.

PEFT shapes: A is r x in, B is out x r, scaling s = alpha / r (alpha / sqrt(r) with rslora),
with per-module overrides from rank_pattern / alpha_pattern; delta dW = s * B @ A.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import regex
import torch

KEY_PREFIX = "base_model.model."
A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def split_key(key: str) -> tuple[str, str] | None:
    """`base_model.model.<module>.lora_A.weight` -> (module, "A"); None for any other key."""
    if not key.startswith(KEY_PREFIX):
        return None
    for suffix, side in ((A_SUFFIX, "A"), (B_SUFFIX, "B")):
        if key.endswith(suffix):
            module = key[len(KEY_PREFIX) : -len(suffix)]
            return (module, side) if module else None
    return None


def factor_key(module: str, side: str) -> str:
    return f"{KEY_PREFIX}{module}{A_SUFFIX if side == 'A' else B_SUFFIX}"


MAGNITUDE_SUFFIX = ".lora_magnitude_vector"  # DoRA (use_dora): one magnitude per output of the module


def magnitude_key(module: str) -> str:
    return f"{KEY_PREFIX}{module}{MAGNITUDE_SUFFIX}"


def magnitude_module(key: str) -> str | None:
    """The module of a DoRA magnitude key; None for any other key."""
    if key.startswith(KEY_PREFIX) and key.endswith(MAGNITUDE_SUFFIX) and len(key) > len(KEY_PREFIX + MAGNITUDE_SUFFIX):
        return key[len(KEY_PREFIX) : -len(MAGNITUDE_SUFFIX)]
    return None


# Patterns come from configs anyone can write: matched with the `regex` engine, which can stop a match
# (a pattern like (a|aa)+$ backtracks exponentially in Python's re), after this many seconds.
REGEX_TIMEOUT_S = 0.1


def _match(pattern: str, module: str, full: bool) -> bool:
    try:
        found = (regex.fullmatch if full else regex.match)(pattern, module, timeout=REGEX_TIMEOUT_S)
    except TimeoutError:
        raise ValueError(f"the pattern {pattern!r} takes too long to match {module!r}; simplify it") from None
    except regex.error as e:
        raise ValueError(f"{pattern!r} is not a valid regular expression ({e})") from None
    return found is not None


def pattern_value(patterns: Mapping[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches a dotted suffix."""
    for key in patterns or {}:
        if _match(rf"(.*\.)?({key})$", module, full=False):
            return patterns[key]
    return default


def module_rank(config: Mapping[str, Any], module: str) -> int:
    return int(pattern_value(config.get("rank_pattern"), module, config["r"]))


def module_alpha(config: Mapping[str, Any], module: str) -> float:
    return float(pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"]))


def module_scaling(config: Mapping[str, Any], module: str) -> float:
    r, alpha = module_rank(config, module), module_alpha(config, module)
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def targets_module(target_modules: str | Iterable[str] | None, module: str) -> bool:
    """Does PEFT's target_modules select this module path? (list: exact name or dotted suffix;
    string: a regex that must match the whole path; "all-linear": any module.)"""
    if target_modules is None:
        return False
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            return True
        return _match(target_modules, module, full=True)
    return any(module == t or module.endswith("." + t) for t in target_modules)


# --- Factors -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Factors:
    """One module's LoRA: A (r x in), B (out x r), scaling s; delta = s * B @ A. A DoRA module also has
    its magnitude vector m (out): merged, W' = m / ||W + delta||_row * (W + delta), as PEFT merges it. With
    lora_bias, B's bias b (out): merged, the layer's bias + s * b. Read by registry.lora.peft_format.read."""

    A: torch.Tensor
    B: torch.Tensor
    scaling: float
    magnitude: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def to(self, device: str | torch.device) -> Factors:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Factors(self.A.to(device), self.B.to(device), self.scaling, move(self.magnitude), move(self.bias))

    @property
    def in_features(self) -> int:
        return self.A.shape[1]

    @property
    def out_features(self) -> int:
        return self.B.shape[0]


# --- Arrow prototypes ----------------------------------------------------------------------------


def prototype(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The top right singular vector v of B @ A (unit norm, in input space) and its singular value,
    exactly and without forming B @ A: QR of B and of A^T, then the SVD of the r x r core.

    Cost O((in + out) r^2). The sign is fixed so that the largest |component| is positive
    (routing uses |<v, h>|, so any sign is correct; a fixed one makes results reproducible).
    Scaling is left out: it does not change v and multiplies the singular value.
    """
    a, b = A.double(), B.double()
    q_b, r_b = torch.linalg.qr(b)  # out x r, r x r
    q_a, r_a = torch.linalg.qr(a.T)  # in x r, r x r
    _, s, vh = torch.linalg.svd(r_b @ r_a.T)
    v = q_a @ vh[0]
    v = v / v.norm()
    if v[v.abs().argmax()] < 0:
        v = -v
    return v.float(), float(s[0])


def scaled_prototype(f: Factors) -> tuple[torch.Tensor, float]:
    """(v, sigma) of one module, sigma the top singular value of the scaled delta s * B @ A."""
    v, sigma = prototype(f.A, f.B)
    return v, sigma * abs(f.scaling)


def prototypes(factors: Mapping[str, Factors]) -> dict[str, tuple[torch.Tensor, float]]:
    """Per module: scaled_prototype."""
    return {module: scaled_prototype(f) for module, f in factors.items()}


# --- Parameter sketches (for MBC) ----------------------------------------------------------------

SKETCH_P = 8
SKETCH_Q = 8
SKETCH_DRAW = 2  # how R and L are drawn; sketches of different draws do not compare (migration 0009)


def _sketch_seed(*key: object) -> int:
    digest = hashlib.sha256("|".join(map(str, key)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sketch_input(module: str, in_features: int, p: int = SKETCH_P) -> torch.Tensor:
    """The fixed Gaussian R (in x p) of a module's input side, identical in every process (float64
    values of float32 draws: torch draws float32 Gaussians six times faster, and a publish draws
    millions)."""
    g = torch.Generator().manual_seed(_sketch_seed(SKETCH_DRAW, "R", module, in_features, p))
    return torch.randn(in_features, p, generator=g, dtype=torch.float32).double()


def sketch_output(module: str, out_features: int, q: int = SKETCH_Q) -> torch.Tensor:
    """The fixed Gaussian L (q x out) of a module's output side, drawn as sketch_input's R (its own
    seed, so an output sketch draws no R)."""
    g = torch.Generator().manual_seed(_sketch_seed(SKETCH_DRAW, "L", module, out_features, q))
    return torch.randn(q, out_features, generator=g, dtype=torch.float32).double()


def sketch_block(module: str, f: Factors, p: int = SKETCH_P, q: int = SKETCH_Q) -> torch.Tensor:
    """One module's part of `sketch`, before the whole is normalised (float64, length q * p)."""
    R, L = sketch_input(module, f.in_features, p), sketch_output(module, f.out_features, q)
    return ((L @ f.B.double()) @ (f.A.double() @ R) * (f.scaling / math.sqrt(p * q))).reshape(-1)


def unit_concat(parts: list[torch.Tensor]) -> np.ndarray:
    """Blocks concatenated in the order given and L2-normalised, as float32."""
    flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    norm = flat.norm()
    return (flat / norm if norm > 0 else flat).numpy().astype(np.float32)


def sketch(factors: Mapping[str, Factors], p: int = SKETCH_P, q: int = SKETCH_Q) -> np.ndarray:
    """S_m = (L B)(A R) * s / sqrt(p q) per module, concatenated in sorted module order, L2-normalised.

    A random projection of every delta computed from the factors; invariant to re-factorising an
    adapter as (B M, M^-1 A). float32, length len(modules) * q * p.
    """
    return unit_concat([sketch_block(m, factors[m], p, q) for m in sorted(factors)])


OUTPUT_Q = 16


def output_block(q: int = OUTPUT_Q) -> int:
    """The length of one module's block of an output sketch: the upper triangle of a q x q Gram."""
    return q * (q + 1) // 2


def output_sketch(factors: Mapping[str, Factors], q: int = OUTPUT_Q) -> np.ndarray:
    """What each delta writes, compared across adapters (MBC's default embedding).

    Per module, the Gram of the delta's outputs seen through a fixed Gaussian L (q x out, seeded like the
    sketch's): G = (L dW)(L dW)^T = (L B s)(A A^T)(L B s)^T, a q x q matrix from r x r products. Its upper
    triangle (off-diagonal entries times sqrt 2, so dot products are Frobenius products of Grams), scaled
    to unit norm so every module counts the same; blocks in sorted module order, L2-normalised.

    It depends on dW alone (not on how it is factorised) and not on the input side, where a LoRA keeps
    most of its random initialisation of A: on the real library it groups the families of tasks better
    than the delta sketch or the paper's flattened parameters (bench/README.md). float32, length
    len(modules) * q (q + 1) / 2.
    """
    return unit_concat([output_gram(m, factors[m], q) for m in sorted(factors)])


def output_gram(module: str, f: Factors, q: int = OUTPUT_Q) -> torch.Tensor:
    """One module's block of `output_sketch`: the upper triangle of its Gram, scaled to unit norm."""
    rows, cols = torch.triu_indices(q, q)
    scale = torch.where(rows == cols, 1.0, math.sqrt(2.0)).double()
    L = sketch_output(module, f.out_features, q)
    LB = (L @ f.B.double()) * f.scaling
    A = f.A.double()
    G = LB @ (A @ A.T) @ LB.T
    block = G[rows, cols] * scale
    norm = block.norm()
    return block / norm if norm > 0 else block


# --- Weighted sums of adapters (cluster adapters, compositions) ------------------------------------


def concat_average(members: list[Factors]) -> Factors:
    """The exact average of the members' deltas, (1/n) sum_i s_i B_i A_i, as one factor pair of rank
    sum r_i: A = [A_1; ...; A_n], B = [s_1 B_1 | ... | s_n B_n] / n, scaling 1."""
    return concat_sum(members, [1.0 / len(members)] * len(members))


def concat_sum(members: list[Factors], weights: list[float]) -> Factors:
    """sum_i w_i s_i B_i A_i exactly, as one factor pair of rank sum r_i: A = [A_1; ...; A_n],
    B = [w_1 s_1 B_1 | ... | w_n s_n B_n], scaling 1 (never a dense delta)."""
    A = torch.cat([m.A.double() for m in members], dim=0)
    B = torch.cat([m.B.double() * (m.scaling * w) for m, w in zip(members, weights, strict=True)], dim=1)
    return Factors(A, B, 1.0)


def weighted_sum(
    adapters: list[Mapping[str, Factors]], weights: list[float], rank: int | None = None
) -> dict[str, Factors]:
    """Per module, sum_i w_i s_i B_i A_i over the adapters that adapt it (the others add nothing): the
    concatenated factors, or with `rank` the best rank-`rank` approximation of that sum."""
    out = {}
    for module in sorted({m for factors in adapters for m in factors}):
        present = [(f[module], w) for f, w in zip(adapters, weights, strict=True) if module in f]
        total = concat_sum([f for f, _ in present], [w for _, w in present])
        out[module] = truncate(total, rank) if rank else total
    return out


def adapter_files(
    factors: Mapping[str, Factors], base_model: str, fan_in_fan_out: bool = False, task_type: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config.json, adapter_model.safetensors tensors) of a PEFT LoRA adapter holding these factors
    (scaling 1 each: lora_alpha = r, per-module ranks in rank_pattern/alpha_pattern), which PEFT loads."""
    ranks = {name: f.A.shape[0] for name, f in factors.items()}
    r = max(ranks.values())
    pattern = {re.escape(name): k for name, k in ranks.items() if k != r}
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": r,
        "target_modules": sorted(factors),
        "base_model_name_or_path": base_model,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "use_rslora": False,
        "fan_in_fan_out": fan_in_fan_out,
        "lora_dropout": 0.0,
        "bias": "none",
        "task_type": task_type,
        "inference_mode": True,
    }
    tensors = {}
    for name, f in factors.items():
        tensors[factor_key(name, "A")] = f.A.float().contiguous()
        tensors[factor_key(name, "B")] = f.B.float().contiguous()
    return config, tensors


def truncate(f: Factors, rank: int) -> Factors:
    """The best rank-`rank` approximation of s * B @ A (Eckart-Young), from the factors alone:
    QR of B and of A^T, SVD of the small core; singular values split evenly between the factors."""
    q_b, r_b = torch.linalg.qr(f.B.double())
    q_a, r_a = torch.linalg.qr(f.A.double().T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T * f.scaling)
    k = min(rank, int(s.shape[0]))
    root = s[:k].sqrt()
    return Factors((root[:, None] * vh[:k]) @ q_a.T, (q_b @ u[:, :k]) * root[None, :], 1.0)
