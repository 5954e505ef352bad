"""Two hub processes on one database keep their indexes in step through the change sequence."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
from safetensors.torch import load_file

from quiver_hub.hub.services import Services
from quiver_hub.hub.settings import Settings
from quiver_hub.registry.accounts.tokens import token_for_user
from quiver_hub.registry.db import writing
from tests.support.adapters import BASE, upload_parts, write_adapter
from tests.support.servers import free_port, serve_process

V0 = "model.layers.0.self_attn.v_proj"  # a module the hub routes on by default


def query_for(folder: Path) -> dict:
    """Hidden states lying along the adapter's own v_proj prototype, so it must be routed to."""
    t = load_file(str(folder / "adapter_model.safetensors"))
    a = t[f"base_model.model.{V0}.lora_A.weight"].double().numpy()
    b = t[f"base_model.model.{V0}.lora_B.weight"].double().numpy()
    v = np.linalg.svd(b @ a)[2][0]
    return {"hidden_states": {V0: [list(v * 5), list(-v * 3)]}, "base_model": BASE, "top_k": 1}


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["results"]]


def test_second_process_sees_publishes_edits_and_deletes(database_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", database_url=database_url)
    state = Services.open(settings)
    with writing(state.sessions) as s:
        token = token_for_user(s, user="alice")
        s.commit()
    state.close()
    auth = {"Authorization": f"Bearer {token}"}
    base_env = {**os.environ, "QUIVER_HOME": str(settings.home), "QUIVER_DATABASE_URL": database_url}
    first, second = write_adapter(tmp_path / "first", seed=1), write_adapter(tmp_path / "second", seed=2)

    with serve_process({**base_env, "QUIVER_PORT": str(free_port())}) as a:
        r = httpx.post(
            f"{a}/v1/adapters/alice/first",
            files=upload_parts(first),
            headers=auth,
            data={"description": "Translates English sentences into French."},
            timeout=60,
        )
        assert r.status_code == 201, r.text
        with serve_process({**base_env, "QUIVER_PORT": str(free_port())}) as b:
            # B built its indexes from the database at start-up.
            assert ids(httpx.post(f"{b}/v1/route", json=query_for(first))) == ["alice/first"]
            # A publishes: B's next query sees it.
            r = httpx.post(
                f"{a}/v1/adapters/alice/second",
                files=upload_parts(second),
                headers=auth,
                data={"description": "Writes horror short stories."},
                timeout=60,
            )
            assert r.status_code == 201
            assert ids(httpx.post(f"{b}/v1/route", json=query_for(second))) == ["alice/second"]
            search = {"query": "a scary tale with ghosts", "limit": 1}
            assert ids(httpx.post(f"{b}/v1/search", json=search)) == ["alice/second"]
            # A makes it private: B hides it from others, still shows it to its owner.
            assert (
                httpx.patch(f"{a}/v1/adapters/alice/second", json={"visibility": "private"}, headers=auth).status_code
                == 200
            )
            assert "alice/second" not in ids(httpx.post(f"{b}/v1/search", json=search))
            assert ids(httpx.post(f"{b}/v1/search", json=search, headers=auth)) == ["alice/second"]
            # A deletes it: gone from B for everyone.
            assert httpx.delete(f"{a}/v1/adapters/alice/second", headers=auth).status_code == 200
            assert "alice/second" not in ids(httpx.post(f"{b}/v1/search", json=search, headers=auth))
            assert ids(httpx.post(f"{b}/v1/route", json=query_for(second), headers=auth)) == ["alice/first"]
