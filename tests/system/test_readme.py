"""The README's tour and its Python example, pasted as a user would, against a real `quiver serve`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from examples.make_adapter import tiny_llama
from tests.api.test_client_hub import tokenizer
from tests.support.adapters import lora_config, upload_parts, write_adapter
from tests.support.servers import LiveServer, free_port, serve_process

ROOT = Path(__file__).resolve().parents[2]


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


def python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_readme_python_example_works_when_pasted(server: LiveServer, tmp_path: Path) -> None:
    """The README's ten lines, as written, with SmolLM2 stood in by a tiny random Llama of the same name in
    a Hugging Face cache (HF_HUB_OFFLINE: nothing is downloaded) and a library of two adapters of it."""
    name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    commit = "0" * 39 + "1"
    snapshot = tmp_path / "hf" / "hub" / f"models--{name.replace('/', '--')}" / "snapshots" / commit
    tiny_llama().save_pretrained(snapshot)
    tok = tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tok.save_pretrained(snapshot)
    refs = snapshot.parents[1] / "refs"
    refs.mkdir()
    (refs / "main").write_text(commit)
    token = server.token("alice")
    with server.client(token) as c:
        for i, (repo, examples) in enumerate(
            (("alice/fr", "Translate into French: hello"), ("alice/sql", "SQL: count"))
        ):
            config = lora_config(r=2, targets=["q_proj"])
            config["base_model_name_or_path"] = name
            folder = write_adapter(
                tmp_path / repo.replace("/", "-"), r=2, hidden=32, seed=i, config=config, projs=("q_proj",)
            )
            (folder / "examples.jsonl").write_text(json.dumps({"input": examples}) + "\n")
            assert c.post(f"/v1/adapters/{repo}", files=upload_parts(folder)).status_code == 201, repo
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUIVER_", "HF_"))}
    env.update(
        QUIVER_ENDPOINT=server.url,
        QUIVER_TOKEN=token,
        QUIVER_CACHE=str(tmp_path / "cache"),
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1",
    )
    script = python_example() + "\nprint('PLAN', plan)\nprint('REPLY', repr(reply))\n"
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "PLAN [('alice/fr@" in run.stdout and "REPLY " in run.stdout, run.stdout
