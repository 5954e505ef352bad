"""QUIVER_ROUTE_MODULES: a hub that holds and routes on only some modules' prototypes answers exactly
the formula over those modules, refuses the others clearly, and never starts from a snapshot of another
choice of modules. On SQLite and Postgres. A hub on its defaults: test_route_modules_default.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quiver_hub.hub.services import Services
from quiver_hub.hub.settings import Settings
from tests.api.test_route import HIDDEN, Q0, Q1, V0, brute_force, dense_prototypes, route_json
from tests.support.adapters import BASE, upload_parts, write_adapter
from tests.support.servers import LiveServer

ONLY_Q = r"model\.layers\.\d+\.self_attn\.q_proj"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"route_modules": ONLY_Q})


def test_a_hub_routes_on_the_modules_it_is_told(server: LiveServer, tmp_path: Path) -> None:
    alice = server.token("alice")
    protos = {}
    with server.client(alice) as c:
        for i in range(6):
            folder = write_adapter(tmp_path / f"a{i}", seed=i, hidden=HIDDEN)
            assert c.post(f"/v1/adapters/alice/a{i}", files=upload_parts(folder)).status_code == 201
            protos[f"alice/a{i}"] = dense_prototypes(folder)
        answer = c.get("/v1/route/modules", params={"base_model": BASE}).json()
        assert sorted(answer["modules"]) == [Q0, Q1] and answer["route_modules"] == ONLY_Q

        hidden = {m: np.random.default_rng(1).standard_normal((4, HIDDEN)).astype(np.float32) for m in (Q0, Q1)}
        expected = brute_force(protos, hidden, 3, 1.0)
        got = route_json(server, alice, hidden, limit=100)["results"]
        assert [r["id"] for r in got] == sorted(expected, key=lambda n: (-expected[n], n))[: len(got)]
        assert all(abs(r["score"] - expected[r["id"]]) < 1e-5 for r in got)

        r = c.post("/v1/route", json={"base_model": BASE, "hidden_states": {V0: [[1.0] * HIDDEN]}})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_module"
        assert "QUIVER_ROUTE_MODULES" in r.json()["error"]["message"]

    # A snapshot of the q_proj modules only is not used by a hub that routes on every module, and back.
    only_q = Services.open(server.settings, migrate=False, index=True)
    only_q.close()
    assert {m for _, m, _ in only_q.indexes.prototypes} == {Q0, Q1}
    every = Services.open(server.settings.model_copy(update={"route_modules": ".*"}), migrate=False, index=True)
    try:
        assert not every.opened.from_snapshot and "modules" in every.opened.why
        assert {m for _, m, _ in every.indexes.prototypes} == {Q0, Q1, V0, V0.replace("0", "1")}
        assert all(len(e.modules) == 4 for e in every.indexes.entries.values())
    finally:
        every.close()


def test_a_pattern_that_is_not_a_regular_expression_is_refused() -> None:
    with pytest.raises(ValueError, match="not a regular expression"):
        Settings(route_modules="model.layers.(")


@pytest.mark.parametrize("pattern", ["a{99999999999}", "(" * 5000 + ")" * 5000, "model.layers.("])
def test_quiver_serve_refuses_a_bad_pattern_with_the_settings_message(pattern: str, tmp_path: Path) -> None:
    env = {**os.environ, "QUIVER_HOME": str(tmp_path / "home"), "QUIVER_ROUTE_MODULES": pattern}
    run = subprocess.run(
        [sys.executable, "-m", "quiver_hub", "serve"], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("quiver: QUIVER_ROUTE_MODULES: not a regular expression"), run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.splitlines()) == 1
