"""The `quiver` client commands, run as a user runs them (a subprocess, its own config and cache)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.adapters import write_adapter
from tests.support.servers import LiveServer


def quiver(
    tmp_path: Path, *args: str, env: dict | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    clean.update(
        XDG_CONFIG_HOME=str(tmp_path / "config"), QUIVER_CACHE=str(tmp_path / "cache"), COLUMNS="200", **(env or {})
    )
    return subprocess.run(
        [sys.executable, "-m", "quiver_hub", *args], env=clean, input=stdin, capture_output=True, text=True, timeout=120
    )


def test_login_push_pull_search_info(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    bad = quiver(tmp_path, "login", "--endpoint", server.url, "--token", "qv_wrong")
    assert bad.returncode == 1 and "invalid or revoked token" in bad.stderr
    assert not (tmp_path / "config" / "quiver" / "credentials.json").exists()

    login = quiver(tmp_path, "login", "--endpoint", server.url, stdin=token + "\n")
    assert login.returncode == 0, login.stderr
    assert f"logged in to {server.url} as alice (write)" in login.stdout
    credentials = tmp_path / "config" / "quiver" / "credentials.json"
    assert credentials.stat().st_mode & 0o777 == 0o600

    folder = write_adapter(tmp_path / "a", extra_files={"README.md": b"Translates English into French.\n"})
    pushed = quiver(tmp_path, "push", str(folder), "alice/fr", "--tags", "translation,fr")  # uses the login
    assert pushed.returncode == 0, pushed.stderr
    assert "published alice/fr version 1" in pushed.stdout

    pulled = quiver(tmp_path, "pull", "alice/fr@1")
    assert pulled.returncode == 0, pulled.stderr
    local = Path(pulled.stdout.strip().splitlines()[-1])
    assert (local / "adapter_model.safetensors").read_bytes() == (folder / "adapter_model.safetensors").read_bytes()
    assert local.is_relative_to(tmp_path / "cache")

    found = quiver(tmp_path, "search", "convert text to another language")
    assert found.returncode == 0 and "alice/fr" in found.stdout
    shown = quiver(tmp_path, "info", "alice/fr@1")
    assert shown.returncode == 0 and "adapter_model.safetensors" in shown.stdout
    missing = quiver(tmp_path, "info", "alice/none")
    assert missing.returncode == 1 and "error 404: adapter alice/none not found" in missing.stderr
    described = quiver(tmp_path, "info", "alice/fr")
    assert "Translates English into French." in described.stdout  # the card's first paragraph
