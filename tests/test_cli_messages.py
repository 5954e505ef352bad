"""The `quiver` command meets mistakes with one line that says what to do, and a non-zero exit, never a
traceback (QUIVER_DEBUG=1 shows one); its help shows its own brackets; --version."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import free_port


def quiver(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    full.update(QUIVER_ENDPOINT=f"http://127.0.0.1:{free_port()}", **env)  # nothing listens there
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
