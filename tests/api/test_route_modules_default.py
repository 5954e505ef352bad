"""A hub on its defaults routes on the default modules (the value projection of every layer), says so
in /v1/route/modules, routes an adapter that adapts none of them on its own modules, and refuses a route
that names a module outside the choice with the 400 it always gave. On SQLite and Postgres."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quiver_hub.hub.settings import Settings
from quiver_hub.registry.search.route_modules import DEFAULT_ROUTE_MODULES
from tests.api.test_route import HIDDEN, brute_force, dense_prototypes, route_json
from tests.support.adapters import BASE, upload_parts, write_adapter
from tests.support.servers import LiveServer


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url=database_url)  # the default route_modules


def layer(i: int, proj: str = "q_proj") -> str:
    return f"model.layers.{i}.self_attn.{proj}"


def test_a_hub_on_its_defaults_routes_on_the_default_modules(server: LiveServer, tmp_path: Path) -> None:
    assert server.settings.route_modules == DEFAULT_ROUTE_MODULES
    alice = server.token("alice")
    protos = {}
    with server.client(alice) as c:
        for i in range(4):  # q_proj and v_proj of three layers: routed on v_proj
            folder = write_adapter(tmp_path / f"a{i}", seed=i, hidden=HIDDEN, layers=3)
            assert c.post(f"/v1/adapters/alice/a{i}", files=upload_parts(folder)).status_code == 201
            protos[f"alice/a{i}"] = dense_prototypes(folder)
        # q_proj alone: none of the default modules, so routed on its own
        folder = write_adapter(tmp_path / "q", seed=9, hidden=HIDDEN, layers=2, projs=("q_proj",))
        assert c.post("/v1/adapters/alice/q-only", files=upload_parts(folder)).status_code == 201
        protos["alice/q-only"] = dense_prototypes(folder)

        answer = c.get("/v1/route/modules", params={"base_model": BASE}).json()
        assert answer["route_modules"] == DEFAULT_ROUTE_MODULES
        own = [layer(0), layer(1)]
        assert sorted(answer["modules"]) == sorted([layer(0, "v_proj"), layer(1, "v_proj"), layer(2, "v_proj"), *own])

        rng = np.random.default_rng(3)
        hidden = {m: rng.standard_normal((4, HIDDEN)).astype(np.float32) for m in answer["modules"]}
        chosen = {layer(i, "v_proj") for i in range(3)}  # what the hub holds of each adapter, or the q_proj one's own
        indexed = {n: {m: v for m, v in p.items() if m in chosen or n == "alice/q-only"} for n, p in protos.items()}
        expected = brute_force(indexed, hidden, 3, 1.0)
        got = route_json(server, alice, hidden, limit=100)["results"]
        assert [r["id"] for r in got] == sorted(expected, key=lambda n: (-expected[n], n))[: len(got)]
        assert all(abs(r["score"] - expected[r["id"]]) < 1e-5 for r in got)
        assert {r["id"] for r in got} == set(protos)  # the q_proj adapter too

        # a module the adapters adapt that the hub does not route on: the clear 400 it always got
        r = c.post("/v1/route", json={"base_model": BASE, "hidden_states": {layer(2): [[1.0] * HIDDEN]}})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_module"
        message = r.json()["error"]["message"]
        assert "QUIVER_ROUTE_MODULES" in message and "GET /v1/route/modules" in message
