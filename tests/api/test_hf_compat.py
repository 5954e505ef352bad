"""huggingface_hub and PEFT against a live Quiver hub, with HF_ENDPOINT set before they are imported
(in a subprocess, as INTEROP.md requires). No mocks: the real libraries, the real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import peft
import pytest
import torch
from sqlalchemy import select

from examples.make_adapter import tiny_llama
from quiver_hub.registry.models import AdapterRepo, Embedding, Prototype, Version
from tests.support.adapters import upload_parts
from tests.support.servers import LiveServer

CARD = """---
license: mit
tags:
- summarization
- demo
base_model: quiver-demo/tiny-llama
pipeline_tag: summarization
---

# Tiny summariser

Condenses long passages into a few sentences.
"""


def hf(server: LiveServer, tmp_path: Path, code: str, token: str | None = None, **args: str) -> dict:
    """Run `code` with huggingface_hub/peft pointed at the hub; it prints one JSON object."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=server.url,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HOME=str(tmp_path / "hf-home"),
        **({"HF_TOKEN": token} if token else {}),
    )
    prelude = "import json, sys\nARGS = json.loads(sys.argv[1])\n"
    run = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code), json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture
def adapter_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(tiny_llama(), lora).save_pretrained(folder)
    (folder / "README.md").write_text(CARD)
    return folder


UPLOAD_AND_READ = """
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError
api = HfApi()
out = {}
out["create"] = api.create_repo("alice/hf-lora")
out["create_again"] = api.create_repo("alice/hf-lora", exist_ok=True)
commit = api.upload_folder(folder_path=ARGS["folder"], repo_id="alice/hf-lora", commit_message="first")
out["commit"] = commit.oid
info = api.model_info("alice/hf-lora")
out["info"] = {"id": info.id, "sha": info.sha, "private": info.private, "tags": info.tags,
               "siblings": sorted((s.rfilename, s.size) for s in info.siblings),
               "card": info.card_data.to_dict() if info.card_data else {}}
out["download"] = hf_hub_download("alice/hf-lora", "adapter_model.safetensors")
out["pinned"] = hf_hub_download("alice/hf-lora", "adapter_config.json", revision=info.sha)
out["snapshot"] = snapshot_download("alice/hf-lora")
out["exists"] = [api.file_exists("alice/hf-lora", "adapter_model.safetensors"),
                 api.file_exists("alice/hf-lora", "adapter_model.bin"),
                 api.file_exists("alice/nothing-here", "adapter_model.safetensors")]
out["list"] = [m.id for m in api.list_models(author="alice")]
out["list_filtered"] = [m.id for m in api.list_models(filter="summarization", search="hf-")]
out["whoami"] = api.whoami()["name"]
print(json.dumps(out))
"""


def test_huggingface_hub_uploads_and_reads(server: LiveServer, tmp_path: Path, adapter_folder: Path) -> None:
    token = server.token("alice")
    out = hf(server, tmp_path, UPLOAD_AND_READ, token=token, folder=str(adapter_folder))
    assert out["create"].endswith("/alice/hf-lora") and out["create_again"] == out["create"]
    with server.client() as c:
        version = c.get("/v1/adapters/alice/hf-lora/versions/latest").json()
    assert version["version"] == 1 and out["commit"] == out["info"]["sha"] == version["revision"]
    sizes = {p.name: p.stat().st_size for p in adapter_folder.iterdir()}
    assert out["info"]["siblings"] == [list(kv) for kv in sorted(sizes.items())]
    assert out["info"]["id"] == "alice/hf-lora" and out["info"]["private"] is False
    assert {"summarization", "demo", "base_model:quiver-demo/tiny-llama"} <= set(out["info"]["tags"])
    assert out["info"]["card"]["license"] == "mit"
    assert Path(out["download"]).read_bytes() == (adapter_folder / "adapter_model.safetensors").read_bytes()
    assert Path(out["pinned"]).read_bytes() == (adapter_folder / "adapter_config.json").read_bytes()
    for name in sizes:
        assert (Path(out["snapshot"]) / name).read_bytes() == (adapter_folder / name).read_bytes()
    assert out["exists"] == [True, False, False]
    assert out["list"] == ["alice/hf-lora"] and out["list_filtered"] == ["alice/hf-lora"]
    assert out["whoami"] == "alice"
    # The card's metadata became the adapter's, as a /v1 upload of the same folder would.
    with server.client() as c:
        adapter = c.get("/v1/adapters/alice/hf-lora").json()
    assert (adapter["tags"], adapter["license"], adapter["task"]) == (["summarization", "demo"], "mit", "summarization")


PEFT_ROUND_TRIP = """
import torch, peft
from examples.make_adapter import tiny_llama
ids = torch.tensor(ARGS["ids"])
out = {}
lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
model = peft.get_peft_model(tiny_llama(seed=3), lora)
model.push_to_hub("alice/pushed", private=True)
with torch.no_grad():
    out["pushed_logits"] = model(ids).logits[0, -1].tolist()
loaded = peft.PeftModel.from_pretrained(tiny_llama(), "alice/from-v1").eval()
with torch.no_grad():
    out["from_v1_logits"] = loaded(ids).logits[0, -1].tolist()
print(json.dumps(out))
"""

LOAD_PRIVATE = """
import torch, peft
from examples.make_adapter import tiny_llama
ids = torch.tensor(ARGS["ids"])
try:
    model = peft.PeftModel.from_pretrained(tiny_llama(seed=3), "alice/pushed").eval()
    with torch.no_grad():
        print(json.dumps({"logits": model(ids).logits[0, -1].tolist()}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)[:300]}))
"""


def test_peft_loads_and_pushes(server: LiveServer, tmp_path: Path, adapter_folder: Path) -> None:
    token = server.token("alice")
    with server.client(token) as c:
        assert c.post("/v1/adapters/alice/from-v1", files=upload_parts(adapter_folder)).status_code == 201
    ids = [[1, 5, 9, 17, 33, 2]]
    out = hf(server, tmp_path, PEFT_ROUND_TRIP, token=token, ids=ids)

    local = peft.PeftModel.from_pretrained(tiny_llama(), adapter_folder).eval()
    with torch.no_grad():
        expected = local(torch.tensor(ids)).logits[0, -1]
    torch.testing.assert_close(torch.tensor(out["from_v1_logits"]), expected, rtol=0, atol=1e-6)

    with server.client(token) as owner, server.client() as anon:
        pushed = owner.get("/v1/adapters/alice/pushed").json()
        assert pushed["visibility"] == "private" and pushed["latest"]["version"] == 1
        assert anon.get("/v1/adapters/alice/pushed").status_code == 404
        head = anon.head("/alice/pushed/resolve/main/adapter_config.json")
        assert head.status_code == 404 and head.headers["x-error-code"] == "RepoNotFound"

    hidden = hf(server, tmp_path, LOAD_PRIVATE, ids=ids)  # no token
    assert "error" in hidden and "logits" not in hidden
    seen = hf(server, tmp_path, LOAD_PRIVATE, token=token, ids=ids)
    torch.testing.assert_close(torch.tensor(seen["logits"]), torch.tensor(out["pushed_logits"]), rtol=0, atol=1e-6)


def test_same_adapter_via_hf_and_v1_is_identical(server: LiveServer, tmp_path: Path, adapter_folder: Path) -> None:
    token = server.token("alice")
    hf(
        server,
        tmp_path,
        """
from huggingface_hub import HfApi
HfApi().upload_folder(folder_path=ARGS["folder"], repo_id="alice/via-hf", commit_message="x") \
    if HfApi().create_repo("alice/via-hf") else None
print("{}")
""",
        token=token,
        folder=str(adapter_folder),
    )
    with server.client(token) as c:
        assert c.post("/v1/adapters/alice/via-v1", files=upload_parts(adapter_folder)).status_code == 201
        a = c.get("/v1/adapters/alice/via-hf/versions/latest").json()
        b = c.get("/v1/adapters/alice/via-v1/versions/latest").json()
    for key in (
        "version",
        "base_model",
        "rank",
        "alpha",
        "target_modules",
        "num_parameters",
        "total_size",
        "adapter_config",
        "files",
    ):
        assert a[key] == b[key], key
    with server.state.sessions() as s:

        def analysis(name: str) -> tuple:
            adapter = s.scalar(select(AdapterRepo).where(AdapterRepo.name == name))
            version = s.scalar(select(Version).where(Version.adapter_id == adapter.id))
            protos = [
                (p.module, p.sigma, p.vector)
                for p in s.scalars(
                    select(Prototype).where(Prototype.version_id == version.id).order_by(Prototype.module)
                )
            ]
            embeddings = [
                (e.kind, e.vector)
                for e in s.scalars(select(Embedding).where(Embedding.version_id == version.id).order_by(Embedding.kind))
            ]
            return protos, embeddings, adapter.text_embedding, adapter.tags, adapter.license

        assert analysis("via-hf") == analysis("via-v1")


def test_hf_errors_and_write_rules(server: LiveServer, tmp_path: Path) -> None:
    token, bob = server.token("alice"), server.token("bob")
    out = hf(
        server,
        tmp_path,
        """
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
api, out = HfApi(), {}
api.create_repo("alice/bad")
try:
    api.upload_file(path_or_fileobj=b"not json", path_in_repo="adapter_config.json", repo_id="alice/bad")
except HfHubHTTPError as e:
    out["invalid"] = [e.response.status_code, str(e)]
try:
    api.create_repo("alice/stolen", token=ARGS["bob"])
except HfHubHTTPError as e:
    out["forbidden"] = e.response.status_code
print(json.dumps(out))
""",
        token=token,
        bob=bob,
    )
    assert out["invalid"][0] == 400 and "adapter_model.safetensors is missing" in out["invalid"][1]
    assert out["forbidden"] == 403
    with server.client(token) as c:
        assert c.get("/v1/adapters/alice/bad").json()["latest"] is None  # nothing was published
        r = c.get("/alice/bad/resolve/main/adapter_config.json")  # an empty repo: main exists, the file not
        assert r.status_code == 404 and r.headers["x-error-code"] == "EntryNotFound"
        assert r.headers["x-repo-commit"] == "0" * 40 and r.json() == {"error": r.headers["x-error-message"]}
        r = c.head(f"/alice/bad/resolve/{'ab' * 20}/adapter_config.json")
        assert r.status_code == 404 and r.headers["x-error-code"] == "RevisionNotFound"
        r = c.get("/alice/nope/resolve/main/adapter_config.json")
        assert r.status_code == 404 and r.headers["x-error-code"] == "RepoNotFound"


def test_quiver_import_from_the_hf_cache(server: LiveServer, tmp_path: Path, adapter_folder: Path) -> None:
    token = server.token("alice")
    (adapter_folder / "training_args.bin").write_bytes(b"\x80\x04pickle")
    hf(
        server,
        tmp_path,
        """
from huggingface_hub import HfApi, snapshot_download
api = HfApi()
api.create_repo("alice/source")
files = [f for f in __import__("os").listdir(ARGS["folder"]) if not f.endswith(".bin")]
api.upload_folder(folder_path=ARGS["folder"], repo_id="alice/source", allow_patterns=files)
print(json.dumps({"path": snapshot_download("alice/source")}))
""",
        token=token,
        folder=str(adapter_folder),
    )
    cache_repo = tmp_path / "hf-home" / "hub" / "models--alice--source"
    assert (cache_repo / "refs" / "main").is_file()
    env = {**os.environ, "QUIVER_ENDPOINT": server.url, "QUIVER_TOKEN": token}

    def quiver_import(source: Path, repo: str, *options: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "quiver_hub", "import", str(source), repo, *options],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    run = quiver_import(cache_repo, "alice/imported")
    assert run.returncode == 0, run.stderr
    assert "published alice/imported version 1" in run.stdout
    direct = quiver_import(adapter_folder, "alice/direct")  # nothing is dropped silently: the pickle is refused
    assert direct.returncode == 1 and "training_args.bin" in direct.stderr and "--exclude" in direct.stderr
    direct = quiver_import(adapter_folder, "alice/direct", "--exclude", "*.bin", "--base-model", "org/base")
    assert direct.returncode == 0, direct.stderr
    assert "training_args.bin" not in direct.stderr
    with server.client() as c:
        imported = c.get("/v1/adapters/alice/imported").json()
        assert imported["tags"] == ["summarization", "demo"] and imported["license"] == "mit"
        assert imported["description"] == "Condenses long passages into a few sentences."
        files = c.get("/v1/adapters/alice/imported/versions/1").json()["files"]
        assert {f["path"] for f in files} == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
        assert c.get("/v1/adapters/alice/direct").json()["base_model"] == "org/base"
    bad = quiver_import(tmp_path, "alice/x")
    assert bad.returncode == 2 and "holds no adapter_config.json" in bad.stderr
