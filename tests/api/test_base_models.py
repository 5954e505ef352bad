"""The base model, right the first time: PEFT's own card naming the local path a model was loaded from
does not block an upload whose config names the hub id (quiver push, upload_folder, hf upload), keeps
the path out of tags, and a base model close to a known one is published with a "did you mean" that
route and search repeat. On SQLite and Postgres."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import peft
from transformers import AutoModelForCausalLM

from examples.make_adapter import tiny_llama
from tests.support.adapters import BASE, upload_parts, write_adapter
from tests.support.servers import LiveServer
from tests.system.test_hf_surface import hf_python


def saved_from_a_local_path(tmp_path: Path) -> Path:
    """What save_pretrained writes for a model loaded from a folder on disk whose name_or_path was set to
    its hub id: the config names the id, PEFT's card the local path."""
    tiny_llama().save_pretrained(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    model.name_or_path = "quiver-demo/tiny-llama"
    folder = tmp_path / "adapter"
    peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(folder)
    assert f"base_model: {tmp_path / 'base'}" in (folder / "README.md").read_text()
    assert (
        json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "quiver-demo/tiny-llama"
    )
    return folder


def test_peft_cards_naming_a_local_path_upload_unchanged(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    folder = saved_from_a_local_path(tmp_path)
    env = {**os.environ, "QUIVER_ENDPOINT": server.url, "QUIVER_TOKEN": token}
    pushed = subprocess.run(
        [sys.executable, "-m", "quiver_hub", "push", str(folder), "alice/pushed"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert pushed.returncode == 0, pushed.stderr
    assert "note: alice/pushed: the card names the base model by a local path" in pushed.stderr
    hf_python(
        server,
        token,
        """
        api.create_repo("alice/uploaded")
        api.upload_folder(folder_path=ARGS["folder"], repo_id="alice/uploaded")
        """,
        folder=str(folder),
        home=tmp_path / "hf",
    )
    hf_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    hf_env.update(HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_TOKEN=token, HF_HOME=str(tmp_path / "hf"))
    hf = str(Path(sys.executable).with_name("hf"))
    assert subprocess.run([hf, "repos", "create", "alice/cli"], env=hf_env, capture_output=True).returncode == 0
    uploaded = subprocess.run([hf, "upload", "alice/cli", str(folder), "."], env=hf_env, capture_output=True, text=True)
    assert uploaded.returncode == 0, uploaded.stderr
    with server.client(token) as c:
        for repo in ("alice/pushed", "alice/uploaded", "alice/cli"):
            adapter = c.get(f"/v1/adapters/{repo}").json()
            assert adapter["base_model"] == "quiver-demo/tiny-llama", (repo, adapter)
            assert not any(str(tmp_path) in t for t in adapter["tags"]), adapter["tags"]
            info = c.get(f"/api/models/{repo}").json()
            assert not any(str(tmp_path) in t for t in info["tags"]), info["tags"]
            readme = c.get(f"/v1/adapters/{repo}/versions/latest/files/README.md").content
            assert readme == (folder / "README.md").read_bytes()  # stored unchanged


def test_a_base_model_close_to_a_known_one_is_published_with_a_question(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    with server.client(token) as c:
        first = c.post("/v1/adapters/alice/a", files=upload_parts(write_adapter(tmp_path / "a")))
        assert first.status_code == 201 and first.json()["notices"] == []
        typo = c.post(
            "/v1/adapters/alice/b",
            files=upload_parts(write_adapter(tmp_path / "b", seed=1)),
            data={"base_model": "quiver-test/tiny-lama"},
        )
        assert typo.status_code == 201, typo.text
        assert typo.json()["notices"] == [f"base model quiver-test/tiny-lama is new on this hub; did you mean {BASE}?"]
        assert c.delete("/v1/adapters/alice/b").status_code == 200
        searched = c.post("/v1/search", json={"query": "anything", "base_model": "Quiver-test/tiny-lama"}).json()
        assert searched["results"] == [] and f"did you mean {BASE}?" in searched["notice"]
        routed = c.post(
            "/v1/route",
            json={
                "base_model": "quiver-test/tiny-llamma",
                "hidden_states": {"model.layers.0.self_attn.q_proj": [[1.0] * 16]},
            },
        )
        assert routed.status_code == 400 and f"did you mean {BASE}?" in routed.json()["error"]["message"]
    with server.client() as anonymous:  # nobody is told of a base model only private adapters have
        with server.client(token) as c:
            assert c.patch("/v1/adapters/alice/a", json={"visibility": "private"}).status_code == 200
        searched = anonymous.post("/v1/search", json={"query": "x", "base_model": "quiver-test/tiny-lama"}).json()
        assert BASE not in (searched["notice"] or "")
