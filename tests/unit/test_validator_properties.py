"""Property-based tests of the upload validators: whatever bytes arrive as adapter_config.json and
adapter_model.safetensors, the answer is a valid adapter (which analysis then handles too) or an
InvalidAdapter (a 4xx), never any other exception (a 500)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiver_hub.registry.errors import RegistryError
from quiver_hub.registry.intake.analysis import analyse_weights
from quiver_hub.registry.intake.validation import validate_adapter
from tests.support.adapters import lora_config, raw_safetensors

Q = "model.layers.0.self_attn.q_proj"
KA, KB = f"base_model.model.{Q}.lora_A.weight", f"base_model.model.{Q}.lora_B.weight"
GOOD_CONFIG = json.dumps(lora_config(r=2)).encode()


def good_weights() -> bytes:
    header = {
        KA: {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]},
        KB: {"dtype": "F32", "shape": [4, 2], "data_offsets": [32, 64]},
    }
    return raw_safetensors(header, struct.pack("<16f", *range(1, 17)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
config_fields = st.fixed_dictionaries(
    {},
    optional={
        "peft_type": st.sampled_from(["LORA", "PREFIX_TUNING"]) | json_values,
        "r": st.integers(-2, 5000) | json_values,
        "lora_alpha": st.floats() | st.integers() | json_values,
        "target_modules": st.sampled_from([["q_proj"], "all-linear", ".*q_proj", "(", "(a|aa)+$"]) | json_values,
        "base_model_name_or_path": st.sampled_from(["org/model", "/local/path", ""]) | json_values,
        "rank_pattern": st.dictionaries(st.sampled_from(["q_proj", "(", ".*"]), json_values, max_size=2),
        "alpha_pattern": st.dictionaries(st.sampled_from(["q_proj", "["]), json_values, max_size=2),
        "use_rslora": json_values,
        "use_dora": st.booleans(),
    },
)


def mutated(data: bytes, draw: st.DrawFn) -> bytes:
    """A valid file with bytes flipped, cut or inserted."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        choice = draw(st.integers(0, 2))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if choice == 0 and data:
            data[at] = draw(st.integers(0, 255))
        elif choice == 1:
            del data[at : at + draw(st.integers(1, 16))]
        else:
            data[at:at] = draw(st.binary(max_size=16))
    return bytes(data)


@st.composite
def configs(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return mutated(GOOD_CONFIG, draw)
    fields = {**lora_config(r=2), **draw(config_fields)} if kind == 2 else draw(json_values)
    try:
        return json.dumps(fields).encode()
    except (ValueError, TypeError):
        return b"{}"


@st.composite
def weight_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:
        return mutated(good_weights(), draw)
    header = draw(st.dictionaries(st.sampled_from([KA, KB, "__metadata__", "x"]), json_values, max_size=3))
    return raw_safetensors(header, draw(st.binary(max_size=64)))


def check(tmp_path: Path, config: bytes, weights: bytes) -> None:
    (tmp_path / "adapter_config.json").write_bytes(config)
    (tmp_path / "adapter_model.safetensors").write_bytes(weights)
    files = {p.name: p for p in tmp_path.iterdir()}
    try:
        summary = validate_adapter(files)
    except RegistryError:
        return  # a 4xx with its message
    analyse_weights(files["adapter_model.safetensors"], summary.config)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs(), weights=st.just(good_weights()))
def test_any_config_is_valid_or_a_4xx(tmp_path: Path, config: bytes, weights: bytes) -> None:
    check(tmp_path, config, weights)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=st.just(GOOD_CONFIG), weights=weight_files())
def test_any_weights_file_is_valid_or_a_4xx(tmp_path: Path, config: bytes, weights: bytes) -> None:
    check(tmp_path, config, weights)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs(), weights=weight_files())
def test_any_pair_is_valid_or_a_4xx(tmp_path: Path, config: bytes, weights: bytes) -> None:
    check(tmp_path, config, weights)
