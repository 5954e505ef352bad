"""The `quiver` command meets mistakes with one line that says what to do, and a non-zero exit, never a
traceback (QUIVER_DEBUG=1 shows one); its help shows its own brackets; --version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.adapters import upload_parts, write_adapter
from tests.support.servers import LiveServer, free_port


def quiver(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    full.update({"QUIVER_ENDPOINT": f"http://127.0.0.1:{free_port()}", **env})  # default: nothing listens there
    return subprocess.run(
        [sys.executable, "-m", "quiver_hub", *args], env=full, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("pull", "alice-fr"), "'alice-fr' is not 'namespace/name[@revision]'"),
        (("pull", "alice/fr"), "cannot reach the hub at http://127.0.0.1:"),
        (("info", "alice/fr@1"), "cannot reach the hub"),
        (("whoami",), "cannot reach the hub"),
        (("search", "french"), "cannot reach the hub"),
    ],
)
def test_a_mistake_is_one_line_and_a_non_zero_exit(args: tuple[str, ...], says: str) -> None:
    run = quiver(*args)
    assert run.returncode != 0
    assert says in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    debug = quiver(*args, QUIVER_DEBUG="1")
    assert debug.returncode != 0 and ("Traceback" in debug.stderr or says in debug.stderr)


def test_help_shows_the_revision_syntax_and_the_version() -> None:
    pull = quiver("pull", "--help")
    assert pull.returncode == 0 and "namespace/name[@revision or @number]" in pull.stdout, pull.stdout
    version = quiver("--version")
    assert version.returncode == 0 and version.stdout.startswith("quiver ")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_list_tag_and_delete(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    with server.client(token) as c:
        for name in ("fr", "de"):
            files = upload_parts(write_adapter(tmp_path / name))
            assert c.post(f"/v1/adapters/alice/{name}", files=files, data={"task": name}).status_code == 201
    env = {"QUIVER_ENDPOINT": server.url, "QUIVER_TOKEN": token}
    listed = quiver("list", "--task", "fr", **env)
    assert listed.returncode == 0 and "alice/fr" in listed.stdout and "alice/de" not in listed.stdout, listed
    tagged = quiver("tag", "create", "alice/fr@1", "v1.0", **env)
    assert tagged.returncode == 0 and "as v1.0" in tagged.stdout, tagged.stderr
    with server.client(token) as c:
        assert c.get("/v1/adapters/alice/fr/versions/v1.0").json()["version"] == 1
    assert quiver("tag", "delete", "alice/fr", "v1.0", **env).returncode == 0
    deleted = quiver("delete", "alice/de", "--yes", **env)
    assert deleted.returncode == 0 and "deleted alice/de@1" in deleted.stdout, deleted.stderr
    asked = quiver("delete", "alice/fr", **env)  # no --yes, no terminal: nothing is deleted
    assert asked.returncode != 0
    with server.client(token) as c:
        assert c.get("/v1/adapters/alice/de").status_code == 404 and c.get("/v1/adapters/alice/fr").status_code == 200
    help_ = quiver("--help")
    assert all(command in help_.stdout for command in ("list", "delete", "tag"))


def test_the_command_starts_without_torch() -> None:
    """`quiver --help`, whoami, search, info and list import no torch (bench/bench_cli.py times them beside
    `hf --help`): the command, its operator commands and the HTTP client load without it."""
    code = (
        "import sys, quiver_hub.cli, quiver_hub.hub.commands, quiver_hub.api\n"
        "heavy = sorted(m for m in ('torch', 'faiss', 'sentence_transformers', 'numpy') if m in sys.modules)\n"
        "print(heavy)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_cache_commands(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    folder = write_adapter(tmp_path / "a")
    with server.client(token) as c:
        assert c.post("/v1/adapters/alice/a", files=upload_parts(folder)).status_code == 201
    env = {"QUIVER_ENDPOINT": server.url, "QUIVER_TOKEN": token, "QUIVER_CACHE": str(tmp_path / "cache")}
    assert quiver("pull", "alice/a", **env).returncode == 0
    listed = quiver("cache", "ls", **env)
    assert listed.returncode == 0 and "alice/a" in listed.stdout, listed.stdout
    assert quiver("cache", "verify", **env).stdout.strip().endswith("0 corrupt")
    blob = next(p for p in (tmp_path / "cache" / "blobs").iterdir() if len(p.name) == 64)
    blob.write_bytes(b"damaged")
    damaged = quiver("cache", "verify", **env)
    assert damaged.returncode == 1 and blob.name in damaged.stderr and not blob.exists()
    (tmp_path / "cache" / "blobs" / ("0" * 64 + ".incomplete")).write_bytes(b"x" * 1000)
    pruned = quiver("cache", "prune", "alice/a", **env)
    assert pruned.returncode == 0 and "freed" in pruned.stdout
    assert "nothing cached" in quiver("cache", "ls", **env).stdout
    assert [p.name for p in (tmp_path / "cache" / "blobs").iterdir()] == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_push_takes_a_license_and_examples_and_a_corrupt_download_is_one_line(
    server: LiveServer, tmp_path: Path
) -> None:
    token = server.token("alice")
    env = {"QUIVER_ENDPOINT": server.url, "QUIVER_TOKEN": token, "QUIVER_CACHE": str(tmp_path / "cache")}
    folder = write_adapter(tmp_path / "a")
    args = ("push", str(folder), "alice/a", "--license", "apache-2.0", "--example", "Translate: hi", "--example", "x")
    pushed = quiver(*args, **env)
    assert pushed.returncode == 0, pushed.stderr
    with server.client(token) as c:
        assert c.get("/v1/adapters/alice/a").json()["license"] == "apache-2.0"
        version = c.get("/v1/adapters/alice/a/versions/latest").json()
        examples = c.get("/v1/adapters/alice/a/versions/latest/files/examples.jsonl").text
    assert examples.splitlines() == ['{"input": "Translate: hi"}', '{"input": "x"}']
    weights = next(f["sha256"] for f in version["files"] if f["path"] == "adapter_model.safetensors")
    server.state.store.local_path(weights).write_bytes(b"not the bytes it was")  # the hub's copy damaged
    pulled = quiver("pull", "alice/a", **env)
    assert pulled.returncode == 1 and "do not match their sha256" in pulled.stderr, pulled.stderr
    assert len(pulled.stderr.strip().splitlines()) == 1 and "Traceback" not in pulled.stderr
