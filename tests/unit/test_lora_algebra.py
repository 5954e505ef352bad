"""registry.lora.algebra: exact prototypes and parameter sketches, checked against dense computations."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from quiver_hub.registry.lora import algebra
from quiver_hub.registry.lora.algebra import Factors


def random_factors(r: int, d_in: int, d_out: int, seed: int, gap: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(r, d_in, generator=g, dtype=torch.float64)
    B = torch.randn(d_out, r, generator=g, dtype=torch.float64)
    B[:, 0] *= gap  # widen the gap between the top two singular values when asked
    return A.float(), B.float()


@pytest.mark.parametrize("r, d_in, d_out, seed", [(1, 16, 16, 0), (4, 64, 32, 1), (16, 256, 512, 2), (8, 40, 300, 3)])
def test_prototype_is_the_top_right_singular_vector(r: int, d_in: int, d_out: int, seed: int) -> None:
    A, B = random_factors(r, d_in, d_out, seed)
    v, sigma = algebra.prototype(A, B)
    _, s, vh = torch.linalg.svd(B.double() @ A.double())
    assert v.shape == (d_in,) and v.dtype == torch.float32
    assert abs(float(v.double() @ vh[0])) > 1 - 1e-6
    assert math.isclose(float(v.norm()), 1.0, rel_tol=1e-6)
    assert math.isclose(sigma, float(s[0]), rel_tol=1e-6)


def test_prototype_ignores_sign_alpha_and_rslora() -> None:
    A, B = random_factors(8, 64, 48, seed=4)
    reference, _ = algebra.prototype(A, B)
    for a, b in [(-A, B), (A, -B), (-A, -B), (3.0 * A, B), (A, 0.25 * B)]:
        v, _ = algebra.prototype(a, b)
        assert abs(float(v @ reference)) > 1 - 1e-6
    module = "model.layers.0.self_attn.q_proj"
    configs = [
        {"r": 8, "lora_alpha": 16},
        {"r": 8, "lora_alpha": 1},
        {"r": 8, "lora_alpha": 16, "use_rslora": True},
        {"r": 8, "lora_alpha": 4, "alpha_pattern": {"q_proj": 64}},
    ]
    for config in configs:
        s = algebra.module_scaling(config, module)
        ((v, sigma),) = algebra.prototypes({module: Factors(A, B, s)}).values()
        assert abs(float(v @ reference)) > 1 - 1e-6
        top = float(torch.linalg.svdvals(s * B.double() @ A.double())[0])
        assert math.isclose(sigma, top, rel_tol=1e-6)


def test_scaling_follows_peft() -> None:
    m = "model.layers.3.mlp.down_proj"
    assert algebra.module_scaling({"r": 8, "lora_alpha": 16}, m) == 2.0
    assert algebra.module_scaling({"r": 16, "lora_alpha": 16, "use_rslora": True}, m) == 4.0
    assert algebra.module_scaling({"r": 8, "lora_alpha": 16, "rank_pattern": {"down_proj": 4}}, m) == 4.0
    assert (
        algebra.module_scaling({"r": 8, "lora_alpha": 16, "alpha_pattern": {r"layers\.3\.mlp\.down_proj": 8}}, m) == 1
    )
    assert algebra.module_rank({"r": 8, "rank_pattern": {"up_proj": 2}}, m) == 8
    assert algebra.targets_module(["q_proj", "down_proj"], m) and not algebra.targets_module(["proj"], m)
    assert algebra.targets_module(r".*\.mlp\..*", m) and not algebra.targets_module(r"mlp", m)


def library(seed: int) -> dict[str, Factors]:
    out = {}
    for i, (d_in, d_out) in enumerate([(32, 32), (32, 64), (64, 32)]):
        A, B = random_factors(4, d_in, d_out, seed * 10 + i)
        out[f"model.layers.{i}.proj"] = Factors(A.double(), B.double(), 2.0)
    return out


def test_sketch_is_invariant_to_refactorising() -> None:
    factors = library(1)
    g = torch.Generator().manual_seed(9)
    refactored = {}
    for module, f in factors.items():
        M = torch.randn(4, 4, generator=g, dtype=torch.float64) + 4 * torch.eye(4, dtype=torch.float64)
        refactored[module] = Factors(torch.linalg.solve(M, f.A), f.B @ M, f.scaling)
    a, b = algebra.sketch(factors), algebra.sketch(refactored)
    assert a.dtype == np.float32 and a.shape == (3 * algebra.SKETCH_P * algebra.SKETCH_Q,)
    assert math.isclose(float(np.linalg.norm(a)), 1.0, rel_tol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)
    a, b = algebra.output_sketch(factors), algebra.output_sketch(refactored)
    assert a.dtype == np.float32 and a.shape == (3 * algebra.output_block(),)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_output_sketch_is_the_gram_of_the_deltas_outputs() -> None:
    """Dot products of output sketches are (per module, normalised) Frobenius products of the Grams
    (L dW)(L dW)^T, computed here densely."""
    x, y = library(6), library(7)
    blocks = algebra.output_block()
    sx, sy = algebra.output_sketch(x), algebra.output_sketch(y)
    for i, module in enumerate(sorted(x)):
        grams = []
        for factors in (x, y):
            f = factors[module]
            L = algebra.sketch_output(module, f.out_features, algebra.OUTPUT_Q)
            LD = L @ (f.scaling * f.B.double() @ f.A.double())
            grams.append(LD @ LD.T)
        cos = float((grams[0] * grams[1]).sum() / (grams[0].norm() * grams[1].norm()))
        block = slice(i * blocks, (i + 1) * blocks)
        got = float(sx[block].astype(np.float64) @ sy[block]) / float(
            np.linalg.norm(sx[block]) * np.linalg.norm(sy[block])
        )
        assert abs(got - cos) < 1e-5


def test_sketch_cosine_tracks_delta_cosine() -> None:
    """Random projections preserve cosines on average: sketches of related adapters are close."""
    base = library(2)
    noisy = {m: Factors(f.A, f.B + 0.3 * torch.randn_like(f.B), f.scaling) for m, f in base.items()}
    unrelated = library(3)

    def delta_cos(x, y) -> float:
        dx = torch.cat([(f.scaling * f.B @ f.A).reshape(-1) for _, f in sorted(x.items())])
        dy = torch.cat([(f.scaling * f.B @ f.A).reshape(-1) for _, f in sorted(y.items())])
        return float(dx @ dy / (dx.norm() * dy.norm()))

    sk = {name: algebra.sketch(f) for name, f in [("base", base), ("noisy", noisy), ("unrelated", unrelated)]}
    assert delta_cos(base, noisy) > 0.8
    assert float(sk["base"] @ sk["noisy"]) > 0.6
    assert abs(float(sk["base"] @ sk["unrelated"])) < float(sk["base"] @ sk["noisy"])


def test_sketch_is_identical_in_another_process() -> None:
    code = (
        "import sys, torch; from quiver_hub.registry.lora import algebra; "
        "from tests.unit.test_lora_algebra import library; "
        "sys.stdout.write((algebra.sketch(library(5)).tobytes() + algebra.output_sketch(library(5)).tobytes()).hex())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    ).stdout
    assert other == (algebra.sketch(library(5)).tobytes() + algebra.output_sketch(library(5)).tobytes()).hex()
