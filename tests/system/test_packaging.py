"""The wheel as a user installs it: one import name, the thin client without the server's dependencies.

Builds the wheel from this checkout, installs it (with torch pinned first, as the README says) into a
fresh virtual environment without the server extras, and uses it from a folder that holds a `client.py`
and a `registry/` of the user's own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCH = "torch==2.13.0"


def run(*args: str | Path, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUIVER_", "PYTHON"))}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def thin_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with torch and the quiver-hub wheel, no extras; returns its bin/."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("client", "hub", "registry", "migrations"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", source)
    (wheel,) = (tmp / "dist").glob("quiver_hub-*.whl")
    venv.create(tmp / "env", with_pip=True)
    bin_dir = tmp / "env" / ("Scripts" if os.name == "nt" else "bin")
    run(bin_dir / "python", "-m", "pip", "install", "--quiet", TORCH)
    site = Path(run(bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip())
    before = set(os.listdir(site))
    run(bin_dir / "python", "-m", "pip", "install", "--quiet", wheel)
    (tmp / "added.txt").write_text("\n".join(sorted(set(os.listdir(site)) - before)))
    return bin_dir


def test_the_wheel_installs_one_top_level_package(thin_client: Path) -> None:
    added = (thin_client.parent.parent / "added.txt").read_text().split()
    ours = [name for name in added if "quiver" in name.lower()]
    assert sorted(ours) == ["quiver_hub", "quiver_hub-0.1.0.dist-info"], added
    for old in ("client", "hub", "registry", "migrations"):
        assert old not in added


def test_the_thin_client_works_without_the_server_and_is_not_shadowed(thin_client: Path, tmp_path: Path) -> None:
    # A user's own modules with our old names, beside their script.
    (tmp_path / "client.py").write_text("raise ImportError('the user client.py was imported')\n")
    (tmp_path / "registry").mkdir()
    (tmp_path / "registry" / "__init__.py").write_text("raise ImportError('the user registry was imported')\n")
    code = (
        "import importlib.util, torch\n"
        "from quiver_hub import Hub, merge, merged, apply_arrow, Adapter\n"
        "from quiver_hub.registry.lora.algebra import prototype\n"
        "v, s = prototype(torch.randn(2, 8), torch.randn(8, 2))\n"
        "server = ('fastapi', 'sqlalchemy', 'faiss', 'alembic', 'uvicorn')\n"
        "missing = [m for m in server if importlib.util.find_spec(m)]\n"
        "print('ok', Hub.__module__, merge.__module__, round(float(v.norm()), 4), missing)\n"
    )
    out = run(thin_client / "python", "-c", code, cwd=tmp_path).stdout
    assert out.strip() == "ok quiver_hub.workflows quiver_hub.local.merging 1.0 []"


def test_quiver_serve_without_the_server_extras_says_what_to_install(thin_client: Path, tmp_path: Path) -> None:
    served = run(thin_client / "quiver", "serve", "--port", "9", cwd=tmp_path, check=False)
    assert served.returncode == 2
    assert "pip install 'quiver-hub[server]'" in served.stderr
    assert "quiver serve" in served.stderr
    helped = run(thin_client / "quiver", "--help", cwd=tmp_path)
    assert "push" in helped.stdout and "pull" in helped.stdout
