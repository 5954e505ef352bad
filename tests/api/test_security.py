"""The newer surfaces tried as an attacker would (issue 27), on SQLite and Postgres: page sessions kept on
the server, form and API inputs bounded, namespace-limited tokens that stay inside their namespaces,
forged lineage, downloads a browser will not run, Range per RFC 9110, commit lines of the wrong type,
confusable file names, and a commit whose parent's blobs are gone. The last-admin race runs in
tests/system/test_admin_race.py and the crafted snapshot in tests/api/test_index_snapshot.py."""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from quiver_hub.registry.accounts.access import authenticate
from quiver_hub.registry.catalogue import commits
from quiver_hub.registry.errors import Conflict
from quiver_hub.registry.models import AuditEvent, Token
from tests.support.adapters import upload_parts, write_adapter
from tests.support.servers import LiveServer

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(c: httpx.Client, path: str = "/login") -> str:
    found = CSRF.search(c.get(path).text)
    assert found, f"no form on {path}"
    return found.group(1)


def signed_in(server: LiveServer, token: str) -> httpx.Client:
    """A browser-like client signed in through the pages with `token`."""
    c = httpx.Client(base_url=server.url, timeout=30)
    r = c.post("/login", data={"token": token, "csrf": csrf_of(c)})
    assert r.status_code == 303, r.text
    return c


def cookie_payload(c: httpx.Client) -> dict:
    """What anyone who sees the session cookie can read: the JSON before its signature."""
    value = c.cookies["quiver_session"]
    data = value.split(".", 1)[0]
    return json.loads(base64.b64decode(data + "=" * (-len(data) % 4)))


def test_the_session_cookie_holds_a_random_id_and_logout_ends_it(server: LiveServer) -> None:
    token = server.token("alice")
    c = signed_in(server, token)
    payload = cookie_payload(c)
    assert set(payload) == {"sid"} and "qv_" not in json.dumps(payload)  # no token, no CSRF secret
    assert c.get("/settings/tokens").status_code == 200
    cookie = c.cookies["quiver_session"]
    assert c.post("/logout", data={"csrf": csrf_of(c, "/settings/tokens")}).status_code == 303
    with httpx.Client(base_url=server.url, timeout=30, cookies={"quiver_session": cookie}) as replay:
        r = replay.get("/settings/tokens")  # the replayed cookie names an ended session: signed out
        assert r.status_code == 303 and r.headers["location"] == "/login"
    c.close()


def test_revoking_the_token_ends_its_sessions(server: LiveServer) -> None:
    token = server.token("alice")
    c = signed_in(server, token)
    assert c.get("/settings/tokens").status_code == 200
    with server.client(token) as api:
        me = api.get("/v1/whoami").json()["token_id"]
        assert api.delete(f"/v1/tokens/{me}").status_code == 204
    assert c.get("/settings/tokens").status_code == 303
    c.close()


def test_sign_in_replaces_the_csrf_token(server: LiveServer) -> None:
    token = server.token("alice")
    c = httpx.Client(base_url=server.url, timeout=30)
    planted = csrf_of(c)  # what an attacker who planted this cookie would know
    assert c.post("/login", data={"token": token, "csrf": planted}).status_code == 303
    forged = c.post("/settings/tokens", data={"csrf": planted, "name": "forged", "scope": "write"})
    assert forged.status_code == 400 and "stale" in forged.text
    fresh = csrf_of(c, "/settings/tokens")
    assert fresh != planted
    assert c.post("/settings/tokens", data={"csrf": fresh, "name": "mine"}).status_code == 200
    with server.state.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Token).where(Token.name == "forged")) == 0
    c.close()


@pytest.mark.parametrize("days", ["99999999999", "3650000", "²", "-1", "1e3", "0", "3651", "7 "])
def test_the_token_form_refuses_day_counts_out_of_range(server: LiveServer, days: str) -> None:
    c = signed_in(server, server.token("alice"))
    with server.state.sessions() as s:
        before = s.scalar(select(func.count()).select_from(Token))
    r = c.post("/settings/tokens", data={"csrf": csrf_of(c, "/settings/tokens"), "name": "t", "expires_in_days": days})
    with server.state.sessions() as s:
        made = s.scalar(select(func.count()).select_from(Token)) - before
    if days == "7 ":  # surrounding spaces are fine
        assert r.status_code == 200 and made == 1
    else:
        assert r.status_code == 400 and "whole number from 1 to 3650" in r.text and made == 0, r.text
    c.close()


def test_a_new_token_is_never_shown_from_the_url(server: LiveServer) -> None:
    c = signed_in(server, server.token("alice"))
    page = c.get("/settings/tokens", params={"new_token": "qv_chosen_by_an_attacker"})
    assert page.status_code == 200 and "qv_chosen_by_an_attacker" not in page.text
    c.close()


def test_writes_through_the_pages_are_audited_with_the_address(server: LiveServer) -> None:
    c = signed_in(server, server.token("alice"))
    assert c.post("/settings/tokens", data={"csrf": csrf_of(c, "/settings/tokens"), "name": "p"}).status_code == 200
    with server.state.sessions() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "token.create").order_by(AuditEvent.id))
        assert [e.address for e in event][-1] == "127.0.0.1"
    c.close()


@pytest.mark.parametrize(
    "expires_at", ["2030-01-01T00:00:00", "99999-01-01T00:00:00Z", "2020-01-01T00:00:00Z", "2200-01-01T00:00:00Z"]
)
def test_the_token_api_refuses_bad_expiry_times(server: LiveServer, expires_at: str) -> None:
    with server.client(server.token("alice")) as c:
        r = c.post("/v1/tokens", json={"name": "t", "expires_at": expires_at})
        assert r.status_code in (400, 422), r.text


def test_a_namespace_limited_token_stays_inside_its_namespaces(server: LiveServer) -> None:
    alice = server.token("alice", org="acme")
    with server.client(alice) as c:
        unlimited = c.get("/v1/whoami").json()["token_id"]
        limited = c.post("/v1/tokens", json={"name": "acme only", "scope": "write", "namespaces": ["acme"]}).json()
        inner = c.post("/v1/tokens", json={"name": "inner", "scope": "read", "namespaces": ["acme"]}).json()
    with server.client(limited["token"]) as c:
        assert c.delete(f"/v1/tokens/{unlimited}").status_code == 404  # as if it did not exist
        made = c.post("/v1/orgs", json={"name": "newco"})
        assert made.status_code == 403 and "limited to namespaces" in made.text
        listed = {t["id"] for t in c.get("/v1/tokens").json()}
        assert listed == {limited["id"], inner["id"]}
        assert c.delete(f"/v1/tokens/{inner['id']}").status_code == 204  # inside its namespaces: allowed
    with server.client(alice) as c:
        assert c.get("/v1/whoami").status_code == 200
        assert c.get("/v1/orgs/newco/members").status_code == 404


def test_lineage_cannot_be_forged_onto_another_users_page(server: LiveServer, tmp_path: Path) -> None:
    bob, alice = server.token("bob"), server.token("alice")
    with server.client(bob) as c:
        assert c.post("/v1/adapters/bob/popular", files=upload_parts(write_adapter(tmp_path / "b"))).status_code == 201
    forged = json.dumps({"method": "composition:x", "versions": [{"id": "bob/popular", "weight": 1, "local": True}]})
    with server.client(alice) as c:
        r = c.post(
            "/v1/adapters/alice/copy",
            files=upload_parts(write_adapter(tmp_path / "a", seed=1)),
            data={"derived_from": forged},
        )
        assert r.status_code == 400 and "marked local" in r.text, r.text
        assert c.get("/v1/adapters/alice/copy").status_code == 404  # nothing stored
        honest = json.dumps({"method": "composition:x", "versions": [{"id": "my-folder", "weight": 1, "local": True}]})
        ok = c.post(
            "/v1/adapters/alice/copy",
            files=upload_parts(write_adapter(tmp_path / "a2", seed=2)),
            data={"derived_from": honest},
        )
        assert ok.status_code == 201, ok.text
    assert "Built from this one" not in httpx.get(f"{server.url}/bob/popular").text


def test_downloads_are_never_sniffed_or_run_and_unknown_range_units_are_ignored(
    server: LiveServer, tmp_path: Path
) -> None:
    token = server.token("alice")
    folder = write_adapter(tmp_path / "a", extra_files={"README.md": b"# <script>alert(1)</script>\n"})
    with server.client(token) as c:
        assert c.post("/v1/adapters/alice/a", files=upload_parts(folder)).status_code == 201
        readme = c.get("/v1/adapters/alice/a/versions/latest/files/README.md")
        weights = (folder / "adapter_model.safetensors").read_bytes()
        for url in ("/v1/adapters/alice/a/versions/latest/files/adapter_model.safetensors", "/alice/a/resolve/main/"):
            url = url if url.endswith("safetensors") else url + "adapter_model.safetensors"
            whole = c.get(url, headers={"Range": "items=0-1"})  # RFC 9110: an unknown unit is ignored
            assert whole.status_code == 200 and whole.content == weights, url
            part = c.get(url, headers={"Range": "bytes=0-9"})
            assert part.status_code == 206 and part.content == weights[:10], url
            assert whole.headers["x-content-type-options"] == "nosniff"
    assert readme.headers["x-content-type-options"] == "nosniff"
    assert readme.headers["content-security-policy"].startswith("sandbox")


def test_commit_lines_of_the_wrong_type_and_confusable_names_are_clear_4xx(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    with server.client(token) as c:
        assert c.post("/v1/adapters/alice/a", files=upload_parts(write_adapter(tmp_path / "a"))).status_code == 201

        def commit(*ops: dict) -> httpx.Response:
            lines = [{"key": "header", "value": {"summary": "x"}}, *ops]
            return c.post(
                "/api/models/alice/a/commit/main",
                content="\n".join(json.dumps(x) for x in lines),
                headers={"Content-Type": "application/x-ndjson"},
            )

        card = base64.b64encode(b"# a card that pretends\n").decode()
        for op in (
            {"key": "file", "value": {"path": 12, "content": card}},
            {"key": "file", "value": {"path": "x.md", "content": ["list"]}},
            {"key": "file", "value": {"path": "x.md", "content": card, "encoding": 7}},
            {"key": "deletedFile", "value": {"path": {"a": 1}}},
            {"key": "deletedFolder", "value": {"path": None}},
        ):
            r = commit(op)
            assert r.status_code == 400 and "must be a string" in r.text, (op, r.text)
        confusables = (
            unicodedata.normalize("NFD", "READM\u00c9.md"),  # README.md with a combining accent on the E
            "README\u200b.md",  # a zero-width space
            "ＲＥＡＤＭＥ.md",  # full-width letters
            "readme.md",
            "Adapter_Config.json",
        )
        for name in confusables:
            r = commit({"key": "file", "value": {"path": name, "content": card, "encoding": "base64"}})
            assert r.status_code in (400, 422) and "reads as" in r.text, (name, r.text)
        files = {f["path"] for f in c.get("/v1/adapters/alice/a/versions/latest").json()["files"]}
        assert files == {"adapter_config.json", "adapter_model.safetensors"}


def test_a_commit_whose_parent_lost_its_blobs_is_a_conflict(server: LiveServer, tmp_path: Path) -> None:
    """The interleaving that answered 500: a commit reads its parent's files after a delete of that
    version has purged their blobs (here the purge is done directly, as the delete does it)."""
    token = server.token("alice")
    with server.client(token) as c:
        assert c.post("/v1/adapters/alice/a", files=upload_parts(write_adapter(tmp_path / "a"))).status_code == 201
        version = c.get("/v1/adapters/alice/a/versions/latest").json()
    weights = next(f["sha256"] for f in version["files"] if f["path"] == "adapter_model.safetensors")
    server.state.store.delete(weights)
    with server.state.sessions() as session:
        principal = authenticate(session, token)
    with pytest.raises(Conflict, match="deleted while this commit began"):
        commits.start_commit(server.state.sessions, server.state.store, principal, "alice", "a", "main")
    with server.client(token) as c:
        r = c.post(
            "/api/models/alice/a/commit/main",
            content=json.dumps({"key": "header", "value": {"summary": "x"}}),
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert r.status_code == 409, r.text
