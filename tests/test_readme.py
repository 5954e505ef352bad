"""The README's tour, pasted as a user would, against a real `quiver serve` on the default SQLite."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port, serve_process

ROOT = Path(__file__).resolve().parents[1]


def tour() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- tour:start -->\s*```bash\n(.*?)```\s*<!-- tour:end -->", text, re.S)
    assert block, "README.md lost its tour block"
    return block.group(1)


def test_readme_starts_with_the_two_commands() -> None:
    first_block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make serve", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert (
        "torch==2.13.0" in makefile and re.search(r"^serve:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    )
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_tour_works_when_pasted(tmp_path: Path) -> None:
    # The tour's folder: .venv and examples/ as in a checkout; the hub's home is ./.quiver (the default).
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    env["QUIVER_PORT"] = str(port)
    with serve_process(env, cwd=tmp_path):
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", tour()],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "downloaded byte for byte" in run.stdout
        assert '"id":"alice/demo","version":1' in run.stdout
        assert '{"results":[{"id":"alice/demo"' in run.stdout  # the search step finds it
        assert (tmp_path / ".quiver" / "quiver.db").is_file()
