"""The choices of routing modules (registry/search/route_modules.py): the default, the value projection of
every layer, and the query projection of every 4th layer, in each architecture's spelling; an adapter
with none of the chosen modules keeps its own."""

from __future__ import annotations

import pytest

from quiver_hub.registry.search.route_modules import DEFAULT_ROUTE_MODULES, EVERY_4TH_LAYER_QUERIES, ModuleChoice


def layer(i: int, proj: str = "q_proj") -> str:
    return f"model.layers.{i}.self_attn.{proj}"


FUSED = [
    "transformer.h.4.attn.c_attn",
    "model.layers.0.self_attn.qkv_proj",
    "transformer.blocks.12.attn.Wqkv",
    "transformer.h.4.self_attention.query_key_value",
]
VALUE_SPELLINGS = ["base_model.model.model.layers.8.self_attn.v_proj", "bert.encoder.layer.8.attention.self.value"]
QUERY_SPELLINGS = ["base_model.model.model.layers.8.self_attn.q_proj", "bert.encoder.layer.8.attention.self.query"]
OTHERS = [layer(4, "k_proj"), layer(4, "o_proj"), "lm_head", "model.embed_tokens"]


@pytest.mark.parametrize("module", [layer(i, "v_proj") for i in (0, 1, 4, 13, 30, 100)] + VALUE_SPELLINGS + FUSED)
def test_the_default_chooses_the_value_projection_of_every_layer(module: str) -> None:
    assert ModuleChoice(DEFAULT_ROUTE_MODULES).chooses(module)


@pytest.mark.parametrize("module", [*OTHERS, layer(4), *QUERY_SPELLINGS, layer(4, "v_proj") + ".base_layer"])
def test_the_default_leaves_the_other_modules(module: str) -> None:
    assert not ModuleChoice(DEFAULT_ROUTE_MODULES).chooses(module)


@pytest.mark.parametrize(
    "module, chosen",
    [
        *((layer(i), True) for i in (0, 4, 8, 12, 28, 100)),
        *((layer(i), False) for i in (1, 2, 6, 10, 13, 30)),
        *((m, True) for m in QUERY_SPELLINGS + FUSED),
        *((m, False) for m in OTHERS + VALUE_SPELLINGS + [layer(4) + ".base_layer"]),
        ("transformer.h.5.attn.c_attn", False),
    ],
)
def test_every_4th_layer_s_queries(module: str, chosen: bool) -> None:
    assert ModuleChoice(EVERY_4TH_LAYER_QUERIES).chooses(module) is chosen


def test_an_adapter_with_none_of_the_chosen_modules_keeps_its_own() -> None:
    choice = ModuleChoice(EVERY_4TH_LAYER_QUERIES)
    assert choice.of_adapter([layer(0), layer(1), layer(0, "v_proj")]) == {layer(0)}
    assert choice.of_adapter([layer(1, "v_proj"), layer(2, "v_proj")]) == {layer(1, "v_proj"), layer(2, "v_proj")}


@pytest.mark.parametrize("expression", ["", ".*"])
def test_every_module(expression: str) -> None:
    choice = ModuleChoice(expression)
    assert choice.every and choice.chooses(layer(13, "v_proj"))
