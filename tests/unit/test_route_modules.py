"""The default choice of routing modules (registry/search/route_modules.py): the query projection of
every 4th layer, in each architecture's spelling; an adapter with none of them keeps its own."""

from __future__ import annotations

import pytest

from quiver_hub.registry.search.route_modules import DEFAULT_ROUTE_MODULES, ModuleChoice


def layer(i: int, proj: str = "q_proj") -> str:
    return f"model.layers.{i}.self_attn.{proj}"


@pytest.mark.parametrize(
    "module, chosen",
    [
        *((layer(i), True) for i in (0, 4, 8, 12, 28, 100)),
        *((layer(i), False) for i in (1, 2, 6, 10, 13, 30)),
        (layer(4, "v_proj"), False),
        (layer(4) + ".base_layer", False),
        ("base_model.model.model.layers.8.self_attn.q_proj", True),
        ("transformer.h.4.attn.c_attn", True),
        ("bert.encoder.layer.8.attention.self.query", True),
        ("model.layers.0.self_attn.qkv_proj", True),
        ("transformer.blocks.12.attn.Wqkv", True),
        ("transformer.h.5.attn.c_attn", False),
    ],
)
def test_the_default_chooses_the_query_projection_of_every_4th_layer(module: str, chosen: bool) -> None:
    assert ModuleChoice(DEFAULT_ROUTE_MODULES).chooses(module) is chosen


def test_an_adapter_with_none_of_the_chosen_modules_keeps_its_own() -> None:
    choice = ModuleChoice(DEFAULT_ROUTE_MODULES)
    assert choice.of_adapter([layer(0), layer(1), layer(0, "v_proj")]) == {layer(0)}
    assert choice.of_adapter([layer(1, "v_proj"), layer(2, "v_proj")]) == {layer(1, "v_proj"), layer(2, "v_proj")}


@pytest.mark.parametrize("expression", ["", ".*"])
def test_every_module(expression: str) -> None:
    choice = ModuleChoice(expression)
    assert choice.every and choice.chooses(layer(13, "v_proj"))
