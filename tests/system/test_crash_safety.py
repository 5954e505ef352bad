"""A publish killed at any point leaves no half-visible version and loses nothing acknowledged;
`quiver gc` then removes what the dead publish left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import select

from quiver_hub.registry.models import AdapterRepo, Blob, File, Version
from tests.support.adapters import upload_parts, write_adapter
from tests.support.servers import LiveServer

# Runs in a child process: publish alice/crashy, dying (os._exit, no cleanup) at the named point.
CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from sqlalchemy.orm import Session
    from quiver_hub.hub.settings import Settings
    from quiver_hub.hub.services import Services
    from quiver_hub.registry.catalogue import metadata, publishing
    from quiver_hub.registry.storage import blobs
    from quiver_hub.registry.accounts.access import authenticate

    point, folder, token = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    state = Services.open(Settings(), migrate=False)

    def die(*_a, **_k):
        os._exit(9)

    with state.sessions() as s:  # before any patch: authenticating may record the token's last use
        principal = authenticate(s, token)
    if point == "install":  # after the first blob is renamed into place
        original = blobs.BlobStore.install
        def install_then_die(self, staged):
            original(self, staged)
            die()
        blobs.BlobStore.install = install_then_die
    elif point == "commit":  # every blob in place, rows flushed, the commit never happens
        Session.commit = die

    staged = {}
    for f in sorted(folder.iterdir()):
        with f.open("rb") as fh:
            staged[f.name] = state.store.stage(fh)
        if point == "staging":
            die()
    meta = metadata.AdapterMeta()
    publishing.publish(state.sessions, state.store, principal, "alice", "crashy", staged, meta, state.embedder)
    print("published")
    """
)


def run_child(server: LiveServer, point: str, folder: Path, token: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "QUIVER_HOME": str(server.settings.home), "QUIVER_DATABASE_URL": server.settings.db_url}
    return subprocess.run(
        [sys.executable, "-c", CHILD, point, str(folder), token], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("point", ["staging", "install", "commit"])
def test_crash_mid_publish_leaves_nothing_visible(server: LiveServer, tmp_path: Path, point: str) -> None:
    token = server.token("alice")
    good = write_adapter(tmp_path / "good")
    with server.client(token) as c:
        acknowledged = c.post("/v1/adapters/alice/kept", files=upload_parts(good)).json()
    crashy = write_adapter(tmp_path / "crashy", seed=3)

    child = run_child(server, point, crashy, token)
    assert child.returncode == 9, child.stderr

    with server.state.sessions() as s:
        assert s.scalar(select(AdapterRepo).where(AdapterRepo.name == "crashy")) is None
        assert [v.number for v in s.scalars(select(Version))] == [1]
        referenced = set(s.scalars(select(File.sha256)))
        assert set(s.scalars(select(Blob.sha256))) == referenced
    with server.client() as c:
        assert c.get("/v1/adapters/alice/crashy").status_code == 404
        assert [a["id"] for a in c.get("/v1/adapters").json()["adapters"]] == ["alice/kept"]
        for f in acknowledged["files"]:  # what was acknowledged is intact
            body = c.get(f"/v1/adapters/alice/kept/versions/1/files/{f['path']}").content
            assert body == (good / f["path"]).read_bytes()

    leftovers = {str(p.relative_to(server.state.store.root)) for p in server.state.store.root.rglob("*") if p.is_file()}
    assert leftovers, "the dead publish should have left staging or blob files behind"
    gc = server.cli("gc", "--grace", "0")
    assert gc.returncode == 0, gc.stderr
    assert {sha for sha, _ in server.state.store.stored()} == referenced
    assert not any(server.state.store.tmp.iterdir())

    # The same publish, done again, works and the kept adapter still reads back.
    with server.client(token) as c:
        again = c.post("/v1/adapters/alice/crashy", files=upload_parts(crashy))
        assert again.status_code == 201 and again.json()["version"] == 1
        assert (
            c.get("/v1/adapters/alice/crashy/versions/1/files/adapter_model.safetensors").content
            == (crashy / "adapter_model.safetensors").read_bytes()
        )


def test_gc_keeps_young_orphans_and_referenced_blobs(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    with server.client(token) as c:
        c.post("/v1/adapters/alice/a", files=upload_parts(write_adapter(tmp_path / "a")))
    crashy = write_adapter(tmp_path / "crashy", seed=5)
    assert run_child(server, "commit", crashy, token).returncode == 9
    before = {sha for sha, _ in server.state.store.stored()}
    out = server.cli("gc")  # default grace: a publish may still be in flight
    assert out.returncode == 0 and "removed 0 unreferenced blobs, 0 orphan files" in out.stdout
    assert {sha for sha, _ in server.state.store.stored()} == before
    out = server.cli("gc", "--grace", "0")
    assert "orphan files" in out.stdout and len({sha for sha, _ in server.state.store.stored()}) < len(before)
