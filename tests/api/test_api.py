"""The /v1 API over real HTTP, on SQLite and Postgres."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import select

from quiver_hub.registry.models import Blob
from tests.support.adapters import upload_parts, write_adapter
from tests.support.servers import LiveServer


def publish(server: LiveServer, token: str, repo: str, folder: Path, **fields: str):
    with server.client(token) as c:
        return c.post(f"/v1/adapters/{repo}", files=upload_parts(folder), data=fields)


def stored_blobs(server: LiveServer) -> set[str]:
    return {sha for sha, _ in server.state.store.stored()}


def test_publish_creates_versions_and_reads_them_back(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    folder = write_adapter(tmp_path / "a", extra_files={"README.md": b"# card\n", "examples.jsonl": b'"hi"\n'})
    r = publish(
        server, token, "alice/greeter", folder, description="says hi", task="chat", tags="greeting, en", license="mit"
    )
    assert r.status_code == 201, r.text
    v1 = r.json()
    assert (v1["id"], v1["version"]) == ("alice/greeter", 1)
    assert len(v1["revision"]) == 40 and int(v1["revision"], 16) >= 0
    assert v1["base_model"] == "quiver-test/tiny-llama" and v1["rank"] == 4 and v1["alpha"] == 8.0
    assert v1["target_modules"] == sorted(v1["target_modules"]) and len(v1["target_modules"]) == 4
    assert v1["num_parameters"] == 4 * 2 * 4 * 16 and v1["published_by"] == "alice"
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert {f["path"]: f["size"] for f in v1["files"]} == sizes
    assert v1["total_size"] == sum(sizes.values())

    v2 = publish(server, token, "alice/greeter", write_adapter(tmp_path / "b", seed=1)).json()
    assert v2["version"] == 2 and v2["revision"] != v1["revision"]

    with server.client() as c:
        adapter = c.get("/v1/adapters/alice/greeter").json()
        assert adapter["latest"] == {"id": "alice/greeter", "version": 2, "revision": v2["revision"]}
        assert adapter["tags"] == ["greeting", "en"] and adapter["license"] == "mit" and adapter["task"] == "chat"
        assert adapter["description"] == "says hi" and adapter["visibility"] == "public"
        assert adapter["created_at"].endswith("Z")  # aware UTC on every backend
        by_number = c.get("/v1/adapters/alice/greeter/versions/1").json()
        by_revision = c.get(f"/v1/adapters/alice/greeter/versions/{v1['revision']}").json()
        assert by_number == by_revision == v1
        assert c.get("/v1/adapters/alice/greeter/versions/latest").json()["version"] == 2
        assert [v["version"] for v in c.get("/v1/adapters/alice/greeter/versions").json()["versions"]] == [1, 2]
        missing = c.get("/v1/adapters/alice/greeter/versions/7")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "revision_not_found"
        no_tag = c.get("/v1/adapters/alice/greeter/versions/not-a-tag")  # could be a tag: there is none
        assert no_tag.status_code == 404 and no_tag.json()["error"]["code"] == "revision_not_found"
        bad = c.get("/v1/adapters/alice/greeter/versions/not a rev!")
        assert bad.status_code == 400 and "revision" in bad.json()["error"]["message"]


def test_download_streams_bytes_with_etag_and_range(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    folder = write_adapter(tmp_path / "a")
    publish(server, token, "alice/dl", folder)
    data = (folder / "adapter_model.safetensors").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    url = "/v1/adapters/alice/dl/versions/latest/files/adapter_model.safetensors"
    with server.client() as c:
        r = c.get(url)
        assert r.status_code == 200 and r.content == data
        assert r.headers["etag"] == f'"{sha}"' and int(r.headers["content-length"]) == len(data)
        head = c.head(url)
        assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == f'"{sha}"'
        assert int(head.headers["content-length"]) == len(data)
        part = c.get(url, headers={"Range": "bytes=8-99"})
        assert part.status_code == 206 and part.content == data[8:100]
        assert part.headers["content-range"] == f"bytes 8-99/{len(data)}"
        config = c.get("/v1/adapters/alice/dl/versions/1/files/adapter_config.json")
        assert config.headers["content-type"].startswith("application/json")
        assert config.content == (folder / "adapter_config.json").read_bytes()
        gone = c.get("/v1/adapters/alice/dl/versions/1/files/nope.txt")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "entry_not_found"


def test_list_filters_and_cursor_pagination(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice", org="acme")
    folder = write_adapter(tmp_path / "a")
    for i in range(5):
        ns = "acme" if i % 2 else "alice"
        r = publish(server, token, f"{ns}/ad{i}", folder, task="math" if i < 2 else "code", tags=f"t{i % 2},all")
        assert r.status_code == 201, r.text
    with server.client() as c:
        seen, cursor = [], None
        while True:
            page = c.get("/v1/adapters", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            assert len(page["adapters"]) <= 2
            seen += [a["id"] for a in page["adapters"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ["alice/ad0", "acme/ad1", "alice/ad2", "acme/ad3", "alice/ad4"]

        def ids(**params: str | int) -> list[str]:
            r = c.get("/v1/adapters", params=params)
            assert r.status_code == 200, r.text
            return [a["id"] for a in r.json()["adapters"]]

        assert ids(task="math") == ["alice/ad0", "acme/ad1"]
        assert ids(namespace="acme") == ["acme/ad1", "acme/ad3"]
        assert ids(tag="t1") == ["acme/ad1", "acme/ad3"]
        assert ids(tag="t0", limit=1) == ["alice/ad0"]
        assert ids(base_model="quiver-test/tiny-llama", limit=200) == seen
        assert ids(base_model="other/model") == []
        assert c.get("/v1/adapters", params={"cursor": "garbage!"}).status_code == 400
        assert c.get("/v1/adapters", params={"limit": 0}).status_code == 422


def test_patch_changes_metadata(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    publish(server, token, "alice/p", write_adapter(tmp_path / "a"), description="old")
    with server.client(token) as c:
        r = c.patch("/v1/adapters/alice/p", json={"description": "new", "tags": ["x"], "visibility": "private"})
        assert r.status_code == 200, r.text
        assert (r.json()["description"], r.json()["tags"], r.json()["visibility"]) == ("new", ["x"], "private")
        assert c.get("/v1/adapters/alice/p").json()["task"] is None  # untouched fields stay
        bad = c.patch("/v1/adapters/alice/p", json={"visibility": "secret"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
        assert c.patch("/v1/adapters/alice/p", json={"owner": "bob"}).status_code == 422
    with server.client() as anon:
        assert anon.get("/v1/adapters/alice/p").status_code == 404


def test_delete_version_and_adapter_remove_unreferenced_blobs(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    shared = write_adapter(tmp_path / "a")
    other = write_adapter(tmp_path / "b", seed=7)
    publish(server, token, "alice/d", shared)
    publish(server, token, "alice/d", other)
    publish(server, token, "alice/keep", shared)  # shares every blob with alice/d v1
    before = stored_blobs(server)
    with server.client(token) as c:
        r = c.delete("/v1/adapters/alice/d/versions/2")
        assert r.status_code == 200 and [v["version"] for v in r.json()["deleted"]] == [2]
        weights_v2 = hashlib.sha256((other / "adapter_model.safetensors").read_bytes()).hexdigest()
        assert weights_v2 not in stored_blobs(server) and stored_blobs(server) < before
        assert c.get("/v1/adapters/alice/d/versions/2").status_code == 404
        # Numbers are never reused: the next publish is version 3.
        assert publish(server, token, "alice/d", other).json()["version"] == 3
        r = c.delete("/v1/adapters/alice/d")
        assert r.status_code == 200 and [v["version"] for v in r.json()["deleted"]] == [1, 3]
        assert c.get("/v1/adapters/alice/d").status_code == 404
        # alice/keep still has all its bytes, and they are all that is left.
        keep_files = c.get("/v1/adapters/alice/keep/versions/1").json()["files"]
        for f in keep_files:
            body = c.get(f"/v1/adapters/alice/keep/versions/1/files/{f['path']}").content
            assert hashlib.sha256(body).hexdigest() == f["sha256"]
    assert stored_blobs(server) == {f["sha256"] for f in keep_files}
    with server.state.sessions() as s:
        assert set(s.scalars(select(Blob.sha256))) == stored_blobs(server)


def test_health_docs_and_error_shapes(server: LiveServer) -> None:
    with server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz").json()
        assert ready["status"] == "ready" and ready["checks"] == {"database": "ok", "blobs": "ok", "indexes": "ok"}
        assert c.get("/docs").status_code == 200
        assert "/v1/adapters/{namespace}/{name}" in c.get("/openapi.json").json()["paths"]
        unknown = c.get("/v1/nothing-here")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
        bad_token = c.get("/v1/adapters", headers={"Authorization": "Bearer nope"})
        assert bad_token.status_code == 401 and bad_token.json()["error"]["code"] == "unauthorized"
        assert bad_token.headers["www-authenticate"] == "Bearer"
        basic = c.get("/v1/adapters", headers={"Authorization": "Basic abc"})
        assert basic.status_code == 401
