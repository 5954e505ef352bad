"""Nothing one user sends can leak, lose or break anything for anyone else: the holes found by trying to
break the hub, each as a test on SQLite and Postgres (malformed uploads are in test_bad_uploads.py,
connection floods in test_connections.py)."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from quiver_hub.hub.services import Services
from quiver_hub.registry.accounts.access import authenticate
from quiver_hub.registry.catalogue import commits, edits
from quiver_hub.registry.errors import Conflict
from tests.support.adapters import BASE, lora_config, upload_parts, write_adapter
from tests.support.servers import LiveServer

Q0 = "model.layers.0.self_attn.q_proj"


def publish(server: LiveServer, token: str, repo: str, folder: Path, **form: str) -> httpx.Response:
    with server.client(token) as c:
        return c.post(f"/v1/adapters/{repo}", files=upload_parts(folder), data=form)


# 1. Cluster runs show, and merge, only what the caller may see now.


def test_a_member_made_private_leaves_cluster_runs_and_their_merges(server: LiveServer, tmp_path: Path) -> None:
    alice, bob = server.token("alice"), server.token("bob")
    for i in range(4):
        assert publish(server, alice, f"alice/a{i}", write_adapter(tmp_path / f"a{i}", seed=i)).status_code == 201
    with server.client(bob) as c:
        run = c.post("/v1/clusters", json={"base_model": BASE, "k": 2}).json()
        assert run["status"] == "done" and run["params"]["adapters"] == 4
    with server.client(alice) as c:
        assert c.patch("/v1/adapters/alice/a0", json={"visibility": "private"}).status_code == 200
    with server.client(bob) as c:
        seen = c.get(f"/v1/clusters/{run['id']}").json()
        members = [m["id"] for cluster in seen["clusters"] for m in cluster["members"]]
        assert "alice/a0" not in members and len(members) == 3 and seen["params"]["adapters"] == 3
        listed = next(r for r in c.get("/v1/clusters").json() if r["id"] == run["id"])
        assert "alice/a0" not in json.dumps(listed)
        merged = c.post(f"/v1/clusters/{run['id']}/merge", json={}).json()
        used = [v["id"] for m in merged for v in m["derived_from"]["versions"]]
        assert sorted(used) == ["alice/a1", "alice/a2", "alice/a3"]
    with server.client(alice) as c:  # the owner still sees it in runs of her own
        mine = c.post("/v1/clusters", json={"base_model": BASE, "k": 2}).json()
        assert "alice/a0" in json.dumps(mine["clusters"])


# 2. No adapter makes search or routing fail for anyone, nor the hub fail to restart.


def test_mixed_module_widths_break_nothing_and_survive_a_restart(server: LiveServer, tmp_path: Path) -> None:
    alice, mallory = server.token("alice"), server.token("mallory")
    narrow = write_adapter(tmp_path / "narrow", hidden=8, seed=1)
    wide = write_adapter(tmp_path / "wide", hidden=16, seed=2)
    # A private adapter first, with widths nobody else has: accepted (nothing public to compare with).
    assert publish(server, mallory, "mallory/odd", narrow, visibility="private").status_code == 201
    assert publish(server, alice, "alice/wide", wide).status_code == 201
    # Once public adapters agree on the widths, an upload that disagrees is refused with the reason.
    refused = publish(server, mallory, "mallory/odd2", narrow)
    assert refused.status_code == 422 and "8 -> 8 in this adapter, but 16 -> 16" in refused.json()["error"]["message"]
    with server.client(mallory) as c:
        made_public = c.patch("/v1/adapters/mallory/odd", json={"visibility": "public"})
        assert made_public.status_code == 422 and "16 -> 16" in made_public.json()["error"]["message"]

    def every_route_answers(url: str) -> None:
        for token in (None, alice, mallory):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
                assert c.post("/v1/search", json={"query": "anything"}).status_code == 200
                assert c.post("/v1/route/text", json={"text": "anything"}).status_code == 200
                assert c.get("/v1/route/modules", params={"base_model": BASE}).json()["modules"][Q0] == 16
                wide_route = c.post("/v1/route", json={"base_model": BASE, "hidden_states": {Q0: [[1.0] * 16]}})
                assert wide_route.status_code == 200 and wide_route.json()["results"][0]["id"] == "alice/wide"
                narrow_route = c.post("/v1/route", json={"base_model": BASE, "hidden_states": {Q0: [[1.0] * 8]}})
                if token == mallory:  # her own private adapter, in an index of its own width
                    assert narrow_route.json()["results"][0]["id"] == "mallory/odd"
                else:
                    assert narrow_route.status_code == 400 and "takes 16" in narrow_route.text
                assert c.get("/readyz").status_code == 200

    every_route_answers(server.url)
    restarted = Services.open(server.settings, index=True)  # what a restarted hub does at start-up
    try:
        assert {m for (_, m, w) in restarted.indexes.prototypes if w == 8} == {
            f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
        }
    finally:
        restarted.close()


# 3. A commit that reuses its parent's blobs never loses them to a concurrent delete.


def test_a_commit_racing_the_delete_of_its_parent_is_refused_not_stored_without_bytes(
    server: LiveServer, tmp_path: Path
) -> None:
    token = server.token("alice")
    assert publish(server, token, "alice/raced", write_adapter(tmp_path / "a")).status_code == 201
    state = server.state
    with state.sessions() as session:
        principal = authenticate(session, token)
    # The interleaving that lost blobs: the commit reads its parent's files, the parent is deleted
    # (and its blobs purged), then the commit publishes.
    draft = commits.start_commit(state.sessions, state.store, principal, "alice", "raced", "main")
    draft.add(state.store, "README.md", __import__("io").BytesIO(b"# new card\n"), 1 << 20)
    edits.delete_adapter(state.sessions, state.store, principal, "alice", "raced", rev="1")
    with pytest.raises(Conflict, match="deleted while this commit was made"):
        draft.publish(state.sessions, state.store, principal, state.embedder)
    with server.client(token) as c:
        assert c.get("/v1/adapters/alice/raced/versions").json()["versions"] == []


def test_commits_and_deletes_racing_for_many_rounds_never_lose_a_file(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    folder = write_adapter(tmp_path / "a")
    weights = (folder / "adapter_model.safetensors").read_bytes()
    outcomes: dict[int, int] = {}
    for round_ in range(12):
        repo = f"alice/race{round_}"
        assert publish(server, token, repo, folder).status_code == 201
        card = base64.b64encode(f"# round {round_}\n".encode()).decode()
        lines = [
            {"key": "header", "value": {"summary": "card"}},
            {"key": "file", "value": {"path": "README.md", "content": card, "encoding": "base64"}},
        ]
        results: dict[str, httpx.Response] = {}

        def commit(repo: str = repo, lines: list = lines, results: dict = results) -> None:
            with server.client(token) as c:
                results["commit"] = c.post(
                    f"/api/models/{repo}/commit/main",
                    content="\n".join(json.dumps(x) for x in lines),
                    headers={"Content-Type": "application/x-ndjson"},
                )

        def delete(repo: str = repo, results: dict = results, wait: float = (round_ % 4) * 0.02) -> None:
            time.sleep(wait)
            with server.client(token) as c:
                results["delete"] = c.delete(f"/v1/adapters/{repo}/versions/1")

        threads = [threading.Thread(target=commit), threading.Thread(target=delete)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results["delete"].status_code == 200, results["delete"].text
        status = results["commit"].status_code
        # Never a 500. The delete may win outright: the commit then starts from an adapter with no version,
        # and a README alone is not an adapter (a clear 400).
        emptied = status == 400 and "adapter_config.json is missing" in results["commit"].text
        assert status in (200, 409, 422) or emptied, results["commit"].text
        outcomes[status] = outcomes.get(status, 0) + 1
        if status == 200:  # the new version has every file, byte for byte, for good
            with server.client(token) as c:
                got = c.get(f"/v1/adapters/{repo}/versions/latest/files/adapter_model.safetensors")
                assert got.status_code == 200 and got.content == weights
    assert sum(outcomes.values()) == 12


# 4. Version numbers are never given twice, whatever was deleted.


def test_version_numbers_continue_after_the_adapter_is_deleted(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    for _ in range(2):
        publish(server, token, "alice/numbers", write_adapter(tmp_path / "a"))
    with server.client(token) as c:
        first = c.get("/v1/adapters/alice/numbers/versions/2").json()["revision"]
        assert c.delete("/v1/adapters/alice/numbers").status_code == 200
        again = publish(server, token, "alice/numbers", write_adapter(tmp_path / "b", seed=5)).json()
        assert again["version"] == 3 and again["revision"] != first
        assert c.get("/v1/adapters/alice/numbers/versions/2").status_code == 404
        # create_repo of a deleted name continues too
        assert c.delete("/v1/adapters/alice/numbers").status_code == 200
        assert c.post("/api/repos/create", json={"name": "numbers"}).status_code == 200
    assert publish(server, token, "alice/numbers", write_adapter(tmp_path / "c", seed=6)).json()["version"] == 4


# 5. No single request stalls or exhausts the hub.


def test_oversized_bodies_and_fields_are_refused_before_any_work(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    assert publish(server, token, "alice/p", write_adapter(tmp_path / "a")).status_code == 201
    with server.client(token) as c:
        huge = json.dumps({"description": "x" * (50 * 1024 * 1024)})
        started = time.monotonic()
        r = c.patch("/v1/adapters/alice/p", content=huge, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "QUIVER_MAX_JSON_BYTES" in r.json()["error"]["message"]
        long = c.patch("/v1/adapters/alice/p", json={"description": "x" * 20_000})
        assert long.status_code == 400 and "at most 10000" in long.json()["error"]["message"]
        tags = c.patch("/v1/adapters/alice/p", json={"tags": [f"t{i}" for i in range(100)]})
        assert tags.status_code == 400 and "at most 32 tags" in tags.json()["error"]["message"]
        route = c.post(
            "/v1/route",
            content=b"{" + b" " * (100 * 1024 * 1024),
            headers={"Content-Type": "application/json"},
        )
        assert route.status_code == 413 and "QUIVER_MAX_ROUTE_BYTES" in route.text

        def chunks():  # no Content-Length: cut off while it is read
            for _ in range(40):
                yield b" " * 65536

        chunked = c.post("/v1/search", content=chunks(), headers={"Content-Type": "application/json"})
        assert chunked.status_code == 413
        assert c.get("/healthz").status_code == 200
        assert time.monotonic() - started < 30
        assert c.get("/v1/adapters/alice/p").json()["description"] == ""


def test_a_backtracking_target_modules_pattern_cannot_stall_the_hub(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    folder = write_adapter(tmp_path / "a", config=lora_config(targets=r"(.|..)+\d$"))
    started = time.monotonic()
    r = publish(server, token, "alice/slow", folder)
    assert r.status_code == 422 and "takes too long to match" in r.json()["error"]["message"]
    assert time.monotonic() - started < 10


def test_a_yaml_alias_bomb_in_a_card_stays_small(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    levels = ["a: &a [x,x,x,x,x,x,x,x,x]"]
    for previous, name in zip("abcde", "bcdef", strict=True):  # 9^6 strings from a few hundred bytes
        levels.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    bomb = "---\n" + "\n".join(levels) + "\n---\n"
    folder = write_adapter(tmp_path / "a", extra_files={"README.md": (bomb + "A card.\n").encode()})
    assert publish(server, token, "alice/bomb", folder).status_code == 201
    with server.client() as c:
        info = c.get("/api/models/alice/bomb")
        assert info.status_code == 200 and len(info.content) < 10_000
        checked = c.post("/api/validate-yaml", json={"content": bomb})
        assert "aliases" in checked.json()["errors"][0]["message"]


# 6. Malformed input anywhere is a clear 4xx, and a 500 keeps the connection usable.


def test_odd_paths_and_parameters_are_clear_4xx(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    publish(server, token, "alice/p", write_adapter(tmp_path / "a"))
    huge = str(2**70)
    with server.client(token) as c:
        assert c.get(f"/v1/clusters/{huge}").status_code == 404
        assert c.get(f"/v1/adapters/alice/p/versions/{huge}").status_code == 400
        cursor = base64.urlsafe_b64encode(f"a:{huge}".encode()).decode().rstrip("=")
        assert c.get("/v1/adapters", params={"cursor": cursor}).status_code == 400
        for path in ("/api/models/alice/ünïcode", "/alice/ünïcode/resolve/main/x", "/api/models/ü/p/tree/main"):
            r = c.get(path)
            assert r.status_code in (400, 404) and r.headers["x-error-message"], path
        empty = c.post("/v1/route", json={"base_model": BASE, "hidden_states": {Q0: []}})
        assert empty.status_code == 400 and empty.json()["error"]["code"] == "bad_dimension"
        nested = c.post(
            "/api/models/alice/p/commit/main",
            content=b'{"key": "header", "value": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert nested.status_code == 400 and "nested" in nested.json()["error"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_unexpected_error_is_a_500_with_a_request_id_and_the_connection_stays_open(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("planted failure")

    monkeypatch.setattr("quiver_hub.registry.search.routing.search_text", broken)
    host, port = server.url.removeprefix("http://").split(":")
    request = f"POST /v1/search HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        body = b'{"query": "x"}'
        sock.sendall(f"{request}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        first = read_response(sock)
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())  # the same connection
        second = read_response(sock)
    status, headers, payload = first
    assert status == 500 and "planted" not in payload.decode()
    error = json.loads(payload)["error"]
    assert error["code"] == "internal" and error["request_id"] == headers["x-request-id"]
    assert error["request_id"] in caplog.text and "planted failure" in caplog.text
    assert second[0] == 200 and json.loads(second[2]) == {"status": "ok"}


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(rest) < int(headers["content-length"]):
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), headers, rest
