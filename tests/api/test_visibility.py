"""Private adapters never appear outside their namespace, on any route; never a 403 that leaks them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.adapters import upload_parts, write_adapter
from tests.support.servers import LiveServer

PRIVATE = ["alice/secret", "acme/internal"]


@pytest.fixture
def world(server: LiveServer, tmp_path: Path) -> dict:
    """alice owns alice/*, alice and carol are in acme, bob is an outsider."""
    tokens = {
        "alice": server.token("alice", org="acme"),
        "carol": server.token("carol", org="acme"),
        "bob": server.token("bob"),
        "anonymous": None,
    }
    folder = write_adapter(tmp_path / "a")
    revisions = {}
    with server.client(tokens["alice"]) as c:
        for repo, vis in [("alice/open", "public"), ("alice/secret", "private"), ("acme/internal", "private")]:
            r = c.post(f"/v1/adapters/{repo}", files=upload_parts(folder), data={"visibility": vis, "tags": "t"})
            assert r.status_code == 201, r.text
            revisions[repo] = r.json()["revision"]
    return {"tokens": tokens, "revisions": revisions}


def reads(c, repo: str, revision: str) -> dict[str, int]:
    """Status of every read route for one adapter."""
    file = "adapter_model.safetensors"
    return {
        "get": c.get(f"/v1/adapters/{repo}").status_code,
        "versions": c.get(f"/v1/adapters/{repo}/versions").status_code,
        "latest": c.get(f"/v1/adapters/{repo}/versions/latest").status_code,
        "number": c.get(f"/v1/adapters/{repo}/versions/1").status_code,
        "revision": c.get(f"/v1/adapters/{repo}/versions/{revision}").status_code,
        "download": c.get(f"/v1/adapters/{repo}/versions/1/files/{file}").status_code,
        "head": c.head(f"/v1/adapters/{repo}/versions/{revision}/files/{file}").status_code,
    }


def listed(c) -> set[str]:
    ids: set[str] = set()
    for params in (
        {},
        {"tag": "t"},
        {"base_model": "quiver-test/tiny-llama"},
        {"namespace": "alice"},
        {"namespace": "acme"},
        {"limit": 1},
    ):
        r = c.get("/v1/adapters", params=params)
        assert r.status_code == 200
        ids |= {a["id"] for a in r.json()["adapters"]}
    return ids


@pytest.mark.parametrize(
    "who, sees",
    [
        ("anonymous", {"alice/open"}),
        ("bob", {"alice/open"}),
        ("alice", {"alice/open", "alice/secret", "acme/internal"}),
        ("carol", {"alice/open", "acme/internal"}),
    ],
)
def test_visibility_matrix(server: LiveServer, world: dict, who: str, sees: set[str]) -> None:
    with server.client(world["tokens"][who]) as c:
        assert listed(c) == sees
        for repo, revision in world["revisions"].items():
            statuses = reads(c, repo, revision)
            expected = 200 if repo in sees else 404
            assert statuses == dict.fromkeys(statuses, expected), (who, repo, statuses)
            if repo not in sees:  # indistinguishable from an adapter that does not exist
                hidden = c.get(f"/v1/adapters/{repo}").json()
                assert hidden == {"error": {"code": "not_found", "message": f"adapter {repo} not found"}}


def test_outsiders_cannot_tell_private_from_missing_when_writing(server: LiveServer, world: dict) -> None:
    with server.client(world["tokens"]["bob"]) as c:
        for method, suffix, kwargs in [
            ("PATCH", "", {"json": {"description": "x"}}),
            ("DELETE", "", {}),
            ("DELETE", "/versions/1", {}),
        ]:
            private = c.request(method, f"/v1/adapters/alice/secret{suffix}", **kwargs)
            missing = c.request(method, f"/v1/adapters/alice/no-such{suffix}", **kwargs)
            assert private.status_code == missing.status_code == 403
            assert private.json() == missing.json()
    with server.client(world["tokens"]["alice"]) as c:
        assert c.get("/v1/adapters/alice/secret").json()["description"] == ""


def test_org_members_write_and_read_tokens_only_read(server: LiveServer, world: dict, tmp_path: Path) -> None:
    with server.client(world["tokens"]["carol"]) as c:
        r = c.patch("/v1/adapters/acme/internal", json={"visibility": "public"})
        assert r.status_code == 200 and r.json()["visibility"] == "public"
        assert c.patch("/v1/adapters/alice/secret", json={"description": "x"}).status_code == 403
    with server.client() as anon:
        assert anon.get("/v1/adapters/acme/internal").status_code == 200
    reader = server.token("alice", scope="read")
    with server.client(reader) as c:
        assert c.get("/v1/adapters/alice/secret").status_code == 200
        r = c.delete("/v1/adapters/alice/secret")
        assert r.status_code == 403 and "read-only" in r.json()["error"]["message"]
