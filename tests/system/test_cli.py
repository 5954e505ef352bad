"""The operator commands, run as a user runs them: `quiver ...` in a subprocess."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from tests.support.adapters import upload_parts, write_adapter
from tests.support.servers import LiveServer


def test_token_create_prints_a_working_token_on_its_last_line(server: LiveServer, tmp_path: Path) -> None:
    out = server.cli("token", "create", "--user", "dora", "--org", "lab")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip().splitlines()[-1]
    assert token.startswith("qv_") and " " not in token
    reader = server.cli("token", "create", "--user", "dora", "--scope", "read").stdout.strip().splitlines()[-1]
    folder = write_adapter(tmp_path / "a")
    with server.client(token) as c:
        assert c.post("/v1/adapters/lab/shared", files=upload_parts(folder)).status_code == 201
        assert (
            c.post("/v1/adapters/dora/own", files=upload_parts(folder), data={"visibility": "private"}).status_code
            == 201
        )
    with server.client(reader) as c:
        assert c.get("/v1/adapters/dora/own").status_code == 200
        assert c.post("/v1/adapters/dora/own", files=upload_parts(folder)).status_code == 403

    bad = server.cli("token", "create", "--user", "dora", "--scope", "admin")
    assert bad.returncode == 2 and "scope must be one of read, write" in bad.stderr
    clash = server.cli("token", "create", "--user", "lab")
    assert clash.returncode == 2 and "already exists as an organisation" in clash.stderr
    with server.state.engine.connect() as conn:  # only hashes are stored
        hashes = [row[0] for row in conn.execute(text("SELECT token_hash FROM tokens"))]
    assert token not in hashes and len(hashes) == 2
