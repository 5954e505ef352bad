"""A publish's analysis split between threads (registry/intake/analysis.py) gives, bit for bit, what the
algebra gives module after module: prototypes, sketch and output sketch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quiver_hub.registry.errors import InvalidAdapter
from quiver_hub.registry.intake import analysis
from quiver_hub.registry.lora import algebra, peft_format
from tests.support.adapters import lora_config, write_adapter


@pytest.fixture
def threads():  # noqa: ANN201
    yield analysis.use_threads
    analysis.use_threads(1)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_the_threads_change_no_bit(tmp_path: Path, threads, n: int) -> None:  # noqa: ANN001
    folder = write_adapter(tmp_path / "a", r=4, layers=6, hidden=24, projs=("q_proj", "k_proj", "v_proj"), seed=3)
    weights, config = folder / "adapter_model.safetensors", lora_config(r=4, targets=["q_proj", "k_proj", "v_proj"])
    factors = peft_format.read(weights, config).factors
    threads(n)
    protos, sketch, outputs = analysis.analyse_weights(weights, config)
    expected = algebra.prototypes(factors)
    assert sorted(p.module for p in protos) == sorted(expected) and len(protos) == 18
    for p in protos:
        v, sigma = expected[p.module]
        assert np.array_equal(p.vector, v.numpy()) and p.sigma == sigma
    assert sketch.tobytes() == algebra.sketch(factors).tobytes()
    assert outputs.tobytes() == algebra.output_sketch(factors).tobytes()


def test_a_module_of_nan_is_named_on_any_thread(tmp_path: Path, threads) -> None:  # noqa: ANN001
    import torch
    from safetensors.torch import load_file, save_file

    folder = write_adapter(tmp_path / "a", layers=4, hidden=16)
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in tensors if ".layers.3." in k and "lora_A" in k)
    tensors[key][0, 0] = torch.nan
    save_file(tensors, str(weights))
    threads(2)
    with pytest.raises(InvalidAdapter, match=r"layers\.3\..*NaN"):
        analysis.analyse_weights(weights, lora_config())
