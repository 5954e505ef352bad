"""Schemathesis against the hub's own OpenAPI spec, on a real `quiver serve` holding a real adapter:
generated requests (valid and not) for every operation, a bounded time, zero server errors and zero
answers that break the documented response schemas."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.adapters import upload_parts, write_adapter
from tests.support.servers import free_port, operator_token, serve_process

FUZZ_SECONDS = int(os.environ.get("QUIVER_FUZZ_SECONDS", "90"))
SEED = os.environ.get("QUIVER_FUZZ_SEED", "20261128")  # fixed in CI, so a failure reproduces


def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path: Path) -> None:
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    env.update(QUIVER_HOME=str(tmp_path / "home"), QUIVER_PORT=str(port))
    token = operator_token(env, "alice")
    log = tmp_path / "serve.log"
    with serve_process(env, log=log) as url:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
            folder = write_adapter(tmp_path / "a", extra_files={"README.md": b"# demo\n\nA demo adapter.\n"})
            assert c.post("/v1/adapters/alice/demo", files=upload_parts(folder)).status_code == 201
        fuzz = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{url}/openapi.json",
                "--checks",
                "not_a_server_error,response_schema_conformance",
                "--header",
                f"Authorization: Bearer {token}",
                "--max-time",
                str(FUZZ_SECONDS),
                "--seed",
                SEED,
                "--workers",  # one: hypothesis parses lambdas' source with ast.parse, which is not
                "1",  # thread-safe on CPython 3.11.7 ("AST constructor recursion depth mismatch")
                "--no-color",
            ],
            cwd=tmp_path,  # its own cache folder lands there
            capture_output=True,
            text=True,
            timeout=FUZZ_SECONDS + 300,
        )
    summary = fuzz.stdout[fuzz.stdout.find("SUMMARY") :]
    assert fuzz.returncode == 0, fuzz.stdout[-6000:] + fuzz.stderr[-2000:]
    assert "unhandled error" not in log.read_text(), log.read_text()[-6000:]
    assert "Tested: " in summary
