"""Accounts people manage: tokens (named, scoped, expiring, limited to namespaces, revocable), organisations
with roles, disabled users, and the audit log, on SQLite and Postgres.

The matrix: every kind of caller against every write route and every read of private data, /v1 and the
Hugging Face routes alike; every write that succeeds leaves exactly one audit event, one that fails none.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from quiver_hub.registry.models import AuditEvent, Token
from tests.support.adapters import upload_parts, write_adapter
from tests.support.servers import LiveServer, free_port, serve_process

READ, WRITE = "read", "write"


def events(server: LiveServer) -> int:
    with server.state.sessions() as s:
        return s.scalar(select(func.count()).select_from(AuditEvent))


@pytest.fixture
def org(server: LiveServer, tmp_path: Path) -> dict[str, str | None]:
    """Organisation acme (admin alice, write member wanda, read member rita), its private adapter
    acme/secret, and a token for every kind of caller."""
    alice = server.token("alice", org="acme")  # acme is new: alice is its admin
    tokens: dict[str, str | None] = {"anonymous": None, "admin": alice}
    with server.client(alice) as c:
        for user, role in (("wanda", "write"), ("rita", "read")):
            server.token(user)  # the user exists
            assert c.post("/v1/orgs/acme/members", json={"user": user, "role": role}).status_code == 200
        assert (
            c.post(
                "/v1/adapters/acme/secret",
                files=upload_parts(write_adapter(tmp_path / "s")),
                data={"visibility": "private"},
            ).status_code
            == 201
        )
        assert c.post("/v1/adapters/acme/secret/tags", json={"tag": "v1"}).status_code == 201
        made = {
            "admin read token": c.post("/v1/tokens", json={"name": "ro", "scope": READ}),
            "limited elsewhere": c.post("/v1/tokens", json={"name": "mine", "scope": WRITE, "namespaces": ["alice"]}),
            "expired": c.post(
                "/v1/tokens",
                json={
                    "name": "old",
                    "scope": WRITE,
                    "expires_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
                },
            ),
            "revoked": c.post("/v1/tokens", json={"name": "gone", "scope": WRITE}),
        }
        for name, r in made.items():
            assert r.status_code == 201, r.text
            tokens[name] = r.json()["token"]
        assert c.delete(f"/v1/tokens/{made['revoked'].json()['id']}").status_code == 204
    with server.state.sessions() as s:  # time passes for the expired one
        s.execute(
            update(Token)
            .where(Token.id == made["expired"].json()["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )
        s.commit()
    tokens["write member"] = server.token("wanda")
    tokens["read member"] = server.token("rita")
    tokens["non-member"] = server.token("nora")
    tokens["disabled"] = server.token("dora", org=None)
    with server.client(alice) as c:
        assert c.post("/v1/orgs/acme/members", json={"user": "dora", "role": "write"}).status_code == 200
    disabled = server.cli("admin", "disable-user", "dora")
    assert disabled.returncode == 0, disabled.stderr
    return tokens


CAN_READ = {"admin", "admin read token", "write member", "read member"}
CAN_WRITE = {"admin", "write member"}
UNAUTHENTICATED = {"anonymous", "disabled", "expired", "revoked"}


def write_actions(who: str, tmp_path: Path) -> dict:
    """Each write route, with what it changes made unique to the caller (so every caller's writes count)."""
    slug = who.replace(" ", "-")
    folder = write_adapter(tmp_path / slug, seed=len(slug))
    card = base64.b64encode(f"# {who}\n".encode()).decode()
    commit = "\n".join(
        json.dumps(line)
        for line in [
            {"key": "header", "value": {"summary": f"by {who}"}},
            {"key": "file", "value": {"path": "README.md", "content": card, "encoding": "base64"}},
        ]
    )
    return {
        "publish": lambda c: c.post(f"/v1/adapters/acme/new-{slug}", files=upload_parts(folder)),
        "edit": lambda c: c.patch("/v1/adapters/acme/secret", json={"description": f"edited by {who}"}),
        "tag": lambda c: c.post("/v1/adapters/acme/secret/tags", json={"tag": f"t-{slug}"}),
        "untag": lambda c: c.delete(f"/v1/adapters/acme/secret/tags/t-{slug}"),
        "hf commit": lambda c: c.post(
            "/api/models/acme/secret/commit/main", content=commit, headers={"Content-Type": "application/x-ndjson"}
        ),
        "hf create repo": lambda c: c.post("/api/repos/create", json={"name": f"hf-{slug}", "organization": "acme"}),
        "hf settings": lambda c: c.put("/api/models/acme/secret/settings", json={"private": who == "write member"}),
        "delete version": lambda c: c.delete(f"/v1/adapters/acme/new-{slug}/versions/1"),
    }


READS = {
    "v1 adapter": lambda c: c.get("/v1/adapters/acme/secret"),
    "v1 version by tag": lambda c: c.get("/v1/adapters/acme/secret/versions/v1"),
    "v1 file": lambda c: c.get("/v1/adapters/acme/secret/versions/1/files/adapter_config.json"),
    "hf model info": lambda c: c.get("/api/models/acme/secret"),
    "hf download": lambda c: c.get("/acme/secret/resolve/main/adapter_config.json"),
    "hf refs": lambda c: c.get("/api/models/acme/secret/refs"),
}


def test_the_role_and_token_matrix(server: LiveServer, org: dict, tmp_path: Path) -> None:
    for who, token in org.items():  # every read of private data, before anything changes
        with server.client(token) as c:
            for name, read in READS.items():
                r = read(c)
                if who in UNAUTHENTICATED and who != "anonymous":
                    expected = 401
                else:
                    expected = 200 if who in CAN_READ else 404
                assert r.status_code == expected, (who, name, r.status_code, r.text)
            listed = c.get("/v1/adapters", params={"namespace": "acme"})
            if who in UNAUTHENTICATED and who != "anonymous":
                assert listed.status_code == 401
            else:
                assert ("acme/secret" in listed.text) == (who in CAN_READ), who
    for who, token in org.items():  # every write route
        with server.client(token) as c:
            for name, write in write_actions(who, tmp_path).items():
                before = events(server)
                r = write(c)
                if who in CAN_WRITE:
                    assert r.status_code in (200, 201, 204), (who, name, r.status_code, r.text)
                    assert events(server) == before + 1, (who, name)  # exactly one event
                else:
                    assert r.status_code == (401 if who in UNAUTHENTICATED else 403), (who, name, r.text)
                    assert events(server) == before, (who, name)  # and none for a refusal
    with server.client(org["admin"]) as c:
        log = c.get("/v1/audit", params={"namespace": "acme", "limit": 500}).json()
    by_actor = {}
    for e in log:
        by_actor.setdefault(e["actor"], set()).add(e["action"])
    assert {"publish", "edit", "tag.create", "tag.delete", "create", "visibility", "delete"} <= by_actor["wanda"]
    assert "rita" not in by_actor and "nora" not in by_actor
    assert all(e["address"] == "127.0.0.1" for e in log if e["actor"] != "operator")


def test_members_are_managed_by_admins_only(server: LiveServer, org: dict) -> None:
    with server.client(org["write member"]) as wanda, server.client(org["admin"]) as alice:
        refused = wanda.post("/v1/orgs/acme/members", json={"user": "nora", "role": "admin"})
        assert refused.status_code == 403 and "your role in 'acme' is write" in refused.json()["error"]["message"]
        assert wanda.get("/v1/orgs/acme/members").status_code == 200  # members see who else is
        before = events(server)
        assert alice.post("/v1/orgs/acme/members", json={"user": "nora", "role": "read"}).status_code == 200
        assert alice.post("/v1/orgs/acme/members", json={"user": "nora", "role": "write"}).status_code == 200
        assert alice.delete("/v1/orgs/acme/members/nora").status_code == 204
        assert events(server) == before + 3
        last = alice.delete("/v1/orgs/acme/members/alice")
        assert last.status_code == 409 and "no admin left" in last.json()["error"]["message"]
        created = wanda.post("/v1/orgs", json={"name": "wanda-labs"})
        assert created.status_code == 201 and created.json()["members"] == [{"user": "wanda", "role": "admin"}]
        assert wanda.post("/v1/orgs", json={"name": "acme"}).status_code == 409
    with server.client(org["non-member"]) as nora:
        assert nora.get("/v1/orgs/acme/members").status_code == 404


def test_tokens_people_manage(server: LiveServer, org: dict) -> None:
    with server.client(org["admin"]) as alice, server.client(org["admin read token"]) as ro:
        listed = alice.get("/v1/tokens").json()
        assert {t["name"] for t in listed} >= {"ro", "mine", "old", "gone"}
        assert all("token" not in t and t["hint"].startswith("qv_") for t in listed)
        assert next(t for t in listed if t["name"] == "gone")["revoked_at"] is not None
        assert ro.post("/v1/tokens", json={"scope": "write"}).status_code == 403  # no more than its own scope
        limited = alice.post("/v1/tokens", json={"scope": "read", "namespaces": ["acme"], "name": "ci"}).json()
        with server.client(org["limited elsewhere"]) as mine:
            widened = mine.post("/v1/tokens", json={"scope": "read", "namespaces": ["acme"]})
            assert widened.status_code == 403
            inherited = mine.post("/v1/tokens", json={"scope": "read"}).json()
            assert inherited["namespaces"] == ["alice"]
        # the admins of acme see and may revoke the tokens limited to it
        assert [t["id"] for t in alice.get("/v1/orgs/acme/tokens").json()] == [limited["id"]]
    with server.client(org["non-member"]) as nora:
        assert nora.delete(f"/v1/tokens/{limited['id']}").status_code == 404  # not theirs: not found
    with server.client(limited["token"]) as ci:
        assert ci.get("/v1/adapters/acme/secret").status_code == 200
        assert ci.get("/v1/whoami").json()["user"] == "alice"


def test_revocation_reaches_a_second_hub_process_at_once(server: LiveServer, tmp_path: Path) -> None:
    alice = server.token("alice")
    with server.client(alice) as c:
        made = c.post("/v1/tokens", json={"name": "laptop", "scope": "read"}).json()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    env.update(
        QUIVER_HOME=str(server.settings.home),
        QUIVER_DATABASE_URL=server.settings.db_url,
        QUIVER_PORT=str(free_port()),
    )
    with serve_process(env) as other:
        headers = {"Authorization": f"Bearer {made['token']}"}
        assert httpx.get(f"{other}/v1/whoami", headers=headers).status_code == 200
        with server.client(alice) as c:
            assert c.delete(f"/v1/tokens/{made['id']}").status_code == 204
        refused = httpx.get(f"{other}/v1/whoami", headers=headers)
        assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]


def test_operator_commands_refuse_a_database_that_does_not_exist(server: LiveServer, tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    env["QUIVER_HOME"] = str(tmp_path / "wrong-home")
    run = subprocess.run(
        [sys.executable, "-m", "quiver_hub", "token", "create", "--user", "alice"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "no Quiver database there yet" in run.stderr
    assert str(tmp_path / "wrong-home") in run.stderr and not (tmp_path / "wrong-home" / "quiver.db").exists()
    made = server.cli("admin", "create-token", "--user", "bob", "--name", "ci")
    assert made.returncode == 0 and made.stdout.strip().startswith("qv_")
    assert "database" in made.stderr
    audit = server.cli("admin", "audit", "--action", "token.create")
    assert audit.returncode == 0
    assert any(json.loads(line)["target"].startswith("token") for line in audit.stdout.splitlines())


def test_a_token_is_recorded_as_used_although_another_write_committed_while_it_was_read(server: LiveServer) -> None:
    """Requests of one token arrive together: each reads the token, then records its use. On SQLite a
    read transaction that tries to write after another writer committed gets SQLITE_BUSY at once; the
    use is recorded in a write transaction of its own instead."""
    from quiver_hub.registry.accounts.access import authenticate
    from quiver_hub.registry.db import writing

    token = server.token("alice")
    other = server.token("bob")
    with server.state.sessions() as reader:
        assert reader.scalar(select(func.count()).select_from(Token)) == 2  # a read transaction, begun
        with writing(server.state.sessions) as writer:  # another request commits a write meanwhile
            writer.execute(update(Token).where(Token.user.has(name="bob")).values(name="bob's"))
            writer.commit()
        principal = authenticate(reader, token)
        assert principal.user == "alice"
    with server.state.sessions() as session:
        used = session.scalar(select(Token.last_used_at).where(Token.user.has(name="alice")))
        assert used is not None
        assert authenticate(session, other).user == "bob"
