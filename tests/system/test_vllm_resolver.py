"""The vLLM resolver plugin (quiver_hub.serving.vllm_resolver) against the real `vllm` package's LoRAResolver and
resolver registry (installed by `make test` beside .venv, without its GPU engine) and a real hub: the
entry point found by vllm.plugins.load_general_plugins() with VLLM_PLUGINS=quiver, names resolved to
verified folders, private adapters only with a token, other base models and deleted versions refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.adapters import BASE, upload_parts, write_adapter
from tests.support.servers import LiveServer, in_ci

ROOT = Path(__file__).resolve().parents[2]
VLLM = ROOT / ".venv" / "vllm"

RESOLVE = """
import asyncio, json, logging, sys
from vllm.lora.resolver import LoRAResolverRegistry
from vllm.plugins import load_general_plugins
from quiver_hub.api import HubClient
from quiver_hub.serving.vllm_resolver import QuiverResolver

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
ARGS = json.loads(sys.argv[1])
load_general_plugins()
out = {"resolvers": sorted(LoRAResolverRegistry.get_supported_resolvers())}
resolver = LoRAResolverRegistry.get_resolver("quiver")
out["class"] = type(resolver).__name__
anonymous = QuiverResolver(HubClient(token=""))

def resolve(r, base, name):
    req = asyncio.run(r.resolve_lora(base, name))
    return None if req is None else [req.lora_name, req.lora_int_id, req.lora_path]

for key, base, name in ARGS["cases"]:
    out[key] = resolve(resolver, base, name)
out["private anonymous"] = resolve(anonymous, ARGS["base"], "alice/secret")
print(json.dumps(out))
"""


def resolve(server: LiveServer, token: str, cases: list, tmp_path: Path) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    env.update(
        PYTHONPATH=str(VLLM),
        VLLM_PLUGINS="quiver",
        QUIVER_ENDPOINT=server.url,
        QUIVER_TOKEN=token,
        QUIVER_CACHE=str(tmp_path / "cache"),
    )
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RESOLVE), json.dumps({"cases": cases, "base": BASE})],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_vllm_resolves_adapters_by_name_through_quiver(server: LiveServer, tmp_path: Path) -> None:
    if not (VLLM / ".installed").exists():
        if in_ci():
            pytest.fail("CI must run the vLLM resolver tests: make test installs vllm into .venv/vllm")
        pytest.skip("the vLLM resolver tests need .venv/vllm (make test installs it)")
    alice = server.token("alice")
    folders = {n: write_adapter(tmp_path / n, seed=i) for i, n in enumerate(("v1", "v2", "secret", "other"))}
    other_config = json.loads((folders["other"] / "adapter_config.json").read_text())
    other_config["base_model_name_or_path"] = "quiver-test/another-model"
    (folders["other"] / "adapter_config.json").write_text(json.dumps(other_config))
    with server.client(alice) as c:
        for repo, folder, form in (
            ("alice/pub", folders["v1"], {}),
            ("alice/pub", folders["v2"], {}),
            ("alice/secret", folders["secret"], {"visibility": "private"}),
            ("alice/other", folders["other"], {}),
            ("alice/gone", folders["v1"], {}),
        ):
            assert c.post(f"/v1/adapters/{repo}", files=upload_parts(folder), data=form).status_code == 201
        revision = {v["version"]: v["revision"] for v in c.get("/v1/adapters/alice/pub/versions").json()["versions"]}
        assert c.delete("/v1/adapters/alice/gone/versions/1").status_code == 200
    cases = [
        ["latest", BASE, "alice/pub"],
        ["pinned", BASE, "alice/pub@1"],
        ["pinned by id", BASE, f"alice/pub@{revision[1]}"],
        ["private", BASE, "alice/secret"],
        ["other base model", BASE, "alice/other"],
        ["deleted", BASE, "alice/gone"],
        ["missing", BASE, "alice/never"],
        ["not a repo id", BASE, "my-local-lora"],
    ]
    out, log = resolve(server, alice, cases, tmp_path)
    assert "quiver" in out["resolvers"] and out["class"] == "QuiverResolver"
    for key, folder in (("latest", "v2"), ("pinned", "v1"), ("private", "secret")):
        name, int_id, path = out[key]
        assert int_id > 0 and name == dict((c[0], c[2]) for c in cases)[key]
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            assert (Path(path) / f).read_bytes() == (folders[folder] / f).read_bytes(), (key, f)
    assert out["pinned by id"][1:] == out["pinned"][1:]  # one version, one id, one folder
    assert out["latest"][1] != out["pinned"][1]
    for refused in ("other base model", "deleted", "missing", "not a repo id", "private anonymous"):
        assert out[refused] is None, refused
    assert "adapts quiver-test/another-model" in log and "refused" in log


def test_the_vllm_serve_script_runs_where_there_is_a_gpu_and_says_why_not_elsewhere() -> None:
    import torch

    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "vllm_serve.py")], capture_output=True, text=True, timeout=1800
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    if not torch.cuda.is_available():
        assert run.stdout.startswith("vllm_serve: skipped: no CUDA GPU here"), run.stdout
        pytest.skip(run.stdout.strip())
    assert "| alice/smol-lora@1 | 200 |" in run.stdout
