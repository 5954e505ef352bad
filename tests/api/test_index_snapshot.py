"""The search indexes' snapshot (registry.search.snapshot): a hub starts from it and catches up what was
published, edited and deleted while it was down; a corrupt or foreign snapshot is rebuilt, never trusted.
On SQLite and Postgres."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from quiver_hub.hub.services import Services
from quiver_hub.hub.settings import secret_key
from quiver_hub.registry.search.indexes import PUBLIC, IndexSet
from quiver_hub.registry.search.snapshot import DATA, MANIFEST, _mac, snapshot_seq
from tests.support.adapters import BASE, upload_parts, write_adapter
from tests.support.servers import LiveServer, free_port, serve_process


def contents(indexes: IndexSet) -> dict:
    """Everything the indexes answer from, in a comparable form: entries, and each partition's vectors by id."""
    out: dict = {"entries": dict(indexes.entries)}
    named = [(("prototypes", *key), index) for key, index in indexes.prototypes.items()]
    for kind, index in [*named, (("text",), indexes.text), (("examples",), indexes.examples)]:
        for partition, flat in index.parts.items():
            if flat.ids:
                ids, vectors = flat.contents()
                order = np.argsort(ids)
                out[(*kind, partition)] = (ids[order].tolist(), vectors[order].tobytes())
    return out


def rebuilt(state: Services) -> dict:
    fresh = IndexSet()
    fresh.rebuild(state.sessions)
    return contents(fresh)


def publish(server: LiveServer, token: str, repo: str, folder: Path, **form: str) -> None:
    with server.client(token) as c:
        r = c.post(f"/v1/adapters/{repo}", files=upload_parts(folder), data={"description": repo, **form})
        assert r.status_code == 201, r.text


def test_a_hub_starts_from_its_snapshot_and_catches_up(server: LiveServer, tmp_path: Path) -> None:
    alice, bob = server.token("alice"), server.token("bob")
    publish(server, alice, "alice/a0", write_adapter(tmp_path / "a0", seed=0))
    publish(server, alice, "alice/a1", write_adapter(tmp_path / "a1", seed=1), tags="one")
    publish(server, bob, "bob/b0", write_adapter(tmp_path / "b0", seed=2), visibility="private")

    first = Services.open(server.settings, migrate=False, index=True)  # a hub that serves, then stops
    assert contents(first.indexes) == rebuilt(first)
    first.close()
    seq = snapshot_seq(server.settings.index_dir)
    assert seq == first.indexes.seq and seq > 0

    # While that hub is down: an edit, a visibility change, a delete, a new version and a new adapter.
    with server.client(alice) as c:
        assert c.patch("/v1/adapters/alice/a1", json={"tags": ["two"], "visibility": "private"}).status_code == 200
        assert c.delete("/v1/adapters/alice/a0").status_code == 200
    publish(server, bob, "bob/b0", write_adapter(tmp_path / "b0v2", seed=3), visibility="private")
    publish(server, alice, "alice/a2", write_adapter(tmp_path / "a2", seed=4))

    second = Services.open(server.settings, migrate=False, index=True)
    try:
        assert second.opened.from_snapshot and second.opened.snapshot_seq == seq
        assert second.opened.caught_up >= 4
        assert contents(second.indexes) == rebuilt(second)
        names = {e.identity.id: e for e in second.indexes.entries.values()}
        assert sorted(names) == ["alice/a1", "alice/a2", "bob/b0"]
        assert names["alice/a1"].tags == frozenset({"two"}) and names["alice/a1"].visibility == "private"
        assert names["bob/b0"].identity.version == 2
    finally:
        second.close()
    assert snapshot_seq(server.settings.index_dir) == second.indexes.seq


def test_a_corrupt_snapshot_is_rebuilt_not_trusted(server: LiveServer, tmp_path: Path) -> None:
    alice = server.token("alice")
    for i in range(3):
        publish(server, alice, f"alice/a{i}", write_adapter(tmp_path / f"a{i}", seed=i))
    Services.open(server.settings, migrate=False, index=True).close()
    data = server.settings.index_dir / DATA

    good = data.read_bytes()
    for damage in (good[: len(good) // 2], good[:100] + bytes([good[100] ^ 1]) + good[101:], b""):
        data.write_bytes(damage)  # half-written, one bit flipped, emptied
        state = Services.open(server.settings, migrate=False, index=True)
        try:
            assert not state.opened.from_snapshot and "MAC" in state.opened.why
            assert contents(state.indexes) == rebuilt(state) and len(state.indexes.entries) == 3
        finally:
            state.close()
        assert data.read_bytes() != damage  # replaced by a good one at shutdown

    (server.settings.index_dir / MANIFEST).write_text("{not json")
    state = Services.open(server.settings, migrate=False, index=True)
    try:
        assert not state.opened.from_snapshot and "unreadable" in state.opened.why
        assert len(state.indexes.entries) == 3
    finally:
        state.close()


def test_a_snapshot_of_another_database_is_not_used(server: LiveServer, tmp_path: Path) -> None:
    alice = server.token("alice")
    publish(server, alice, "alice/a0", write_adapter(tmp_path / "a0", seed=0))
    Services.open(server.settings, migrate=False, index=True).close()
    # The same home over another database (or one restored from an older backup): its change sequence
    # does not hold the change the snapshot was taken at.
    other = server.settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'other.db'}"})
    state = Services.open(other, index=True)
    try:
        assert not state.opened.from_snapshot and "does not hold change" in state.opened.why
        assert state.indexes.entries == {}
    finally:
        state.close()


def test_a_snapshot_that_cannot_be_written_does_not_stop_the_hub(
    server: LiveServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alice = server.token("alice")
    publish(server, alice, "alice/a0", write_adapter(tmp_path / "a0", seed=0))
    server.settings.index_dir.mkdir(parents=True, exist_ok=True)
    for p in server.settings.index_dir.iterdir():
        p.unlink()
    server.settings.index_dir.rmdir()
    server.settings.index_dir.write_text("a file where the snapshot's folder should be")
    state = Services.open(server.settings, migrate=False, index=True)
    assert len(state.indexes.entries) == 1  # built from the database
    state.close()  # the save fails: logged, not raised
    assert "snapshot not saved" in caplog.text
    assert "float32 prototypes kept in memory" in caplog.text  # nor could their file be made there


def publish_private_entries(folder: Path) -> None:
    """What an attacker with write access to QUIVER_HOME did: move every private partition's rows into
    the public one and mark the entries public, in indexes.npz (the manifest is left to the caller)."""
    with np.load(folder / DATA, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop("meta").tobytes())
    for entry in meta["entries"]:
        entry["visibility"] = "public"
    merged: dict = {}
    for n, part in enumerate(meta["parts"]):
        key = (part["kind"], json.dumps(part["key"]))
        ids, vec = arrays[f"ids{n}"], arrays[f"vec{n}"]
        got = merged.setdefault(key, {**part, "partition": PUBLIC, "ids": [], "vec": []})
        got["ids"].append(ids), got["vec"].append(vec)
    meta["parts"], out = [], {}
    for n, part in enumerate(merged.values()):
        out[f"ids{n}"], out[f"vec{n}"] = np.concatenate(part.pop("ids")), np.concatenate(part.pop("vec"))
        meta["parts"].append(part)
    with open(folder / DATA, "wb") as f:
        np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **out)


def test_a_crafted_snapshot_cannot_publish_a_private_adapter(server: LiveServer, tmp_path: Path) -> None:
    alice, bob = server.token("alice"), server.token("bob")
    publish(server, alice, "alice/open", write_adapter(tmp_path / "a", seed=0))
    publish(server, bob, "bob/secret", write_adapter(tmp_path / "b", seed=1), visibility="private")
    Services.open(server.settings, migrate=False, index=True).close()
    folder = server.settings.index_dir
    publish_private_entries(folder)
    manifest = json.loads((folder / MANIFEST).read_text())

    # 1. The checksum recomputed, as the last round's format allowed: refused (no MAC under the hub's key).
    plain = {**manifest, "sha256": hashlib.sha256((folder / DATA).read_bytes()).hexdigest()}
    (folder / MANIFEST).write_text(json.dumps(plain))
    state = Services.open(server.settings, migrate=False, index=True)
    try:
        assert not state.opened.from_snapshot and "MAC" in state.opened.why
        assert all(e.visibility == "private" for e in state.indexes.entries.values() if e.namespace == "bob")
    finally:
        state.opened = None  # (so that closing does not write a good snapshot over the crafted one)
        state.close()

    # 2. Signed with the hub's own key (stolen with the files): the snapshot is used, and the private
    # adapter sits in the public partition; the database's visibility still keeps it from every answer.
    publish_private_entries(folder)
    signed = {k: v for k, v in manifest.items() if k != "mac"}
    (folder / MANIFEST).write_text(
        json.dumps({**signed, "mac": _mac(secret_key(server.settings), folder / DATA, signed)})
    )
    state = Services.open(server.settings, migrate=False, index=True)
    try:
        assert state.opened.from_snapshot
        assert {e.identity.id for e in state.indexes.entries.values() if e.visibility == "public"} == {
            "alice/open",
            "bob/secret",
        }
    finally:
        state.opened = None
        state.close()
    env = {
        **os.environ,
        "QUIVER_HOME": str(server.settings.home),
        "QUIVER_DATABASE_URL": server.settings.db_url,
        "QUIVER_PORT": str(free_port()),
    }
    with serve_process(env) as url:
        found = httpx.post(f"{url}/v1/search", json={"query": "bob secret", "limit": 10}, timeout=60).json()
        assert [r["id"] for r in found["results"]] == ["alice/open"]
        page = httpx.get(f"{url}/search", params={"q": "bob secret"}, timeout=60).text
        assert "bob/secret" not in page and "alice/open" in page
        modules = httpx.get(f"{url}/v1/route/modules", params={"base_model": BASE}, timeout=60).json()["modules"]
        hidden = {m: [[1.0] * width] for m, width in modules.items()}
        routed = httpx.post(
            f"{url}/v1/route", json={"hidden_states": hidden, "base_model": BASE, "all_scores": True}, timeout=60
        )
        assert [r["id"] for r in routed.json()["results"]] == ["alice/open"], routed.text
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {bob}"}, timeout=60) as c:
            mine = c.post("/v1/search", json={"query": "bob secret", "limit": 10}).json()["results"]
            assert "bob/secret" in [r["id"] for r in mine]  # its owner still finds it
