"""Several hub machines, one registry: two `quiver serve` processes with their own QUIVER_HOMEs (no shared
folder) on one Postgres and one S3 bucket (moto's server on loopback). What one publishes the other finds,
routes and serves byte for byte; what one deletes the other stops serving; a hub killed in the middle of
a multipart upload leaves nothing visible, and `quiver gc` reclaims its parts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import pytest
import torch

from tests.support.adapters import upload_parts, write_adapter
from tests.support.servers import S3, free_port, operator_token, serve_process

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


def hub_env(database_url: str, s3: S3, bucket: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    env.update(QUIVER_DATABASE_URL=database_url, QUIVER_HOME=str(home), QUIVER_PORT=str(free_port()))
    env.update(s3.env(bucket), **extra)
    return env


def quiver(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quiver_hub", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_two_hubs_share_one_database_and_one_bucket(database_url: str, s3: S3, tmp_path: Path) -> None:
    bucket = s3.bucket()
    env_a = hub_env(database_url, s3, bucket, tmp_path / "home-a")  # redirects downloads to the bucket
    env_b = hub_env(database_url, s3, bucket, tmp_path / "home-b", QUIVER_DOWNLOAD_REDIRECT="0")  # proxies them
    token = operator_token(env_a, "alice")
    folder = write_adapter(tmp_path / "a", hidden=16, extra_files={"README.md": b"# Translates into French.\n"})
    auth = {"Authorization": f"Bearer {token}"}
    with serve_process(env_a) as a, serve_process(env_b) as b:
        published = httpx.post(f"{a}/v1/adapters/alice/fr", files=upload_parts(folder), headers=auth, timeout=60)
        assert published.status_code == 201, published.text
        # hub B: finds it, routes to it, serves it byte for byte (fetched from the bucket through its cache)
        found = httpx.post(f"{b}/v1/search", json={"query": "French translation"}).json()["results"]
        assert found[0]["id"] == "alice/fr"
        hidden = {"model.layers.0.self_attn.v_proj": [[1.0] * 16]}
        routed = httpx.post(f"{b}/v1/route", json={"base_model": "quiver-test/tiny-llama", "hidden_states": hidden})
        assert routed.json()["results"][0]["id"] == "alice/fr"
        url = "/v1/adapters/alice/fr/versions/1/files/adapter_model.safetensors"
        proxied = httpx.get(f"{b}{url}")
        assert proxied.status_code == 200 and proxied.content == (folder / "adapter_model.safetensors").read_bytes()
        ranged = httpx.get(f"{b}{url}", headers={"Range": "bytes=8-15"})
        assert ranged.status_code == 206 and ranged.content == (folder / "adapter_model.safetensors").read_bytes()[8:16]
        # hub A redirects to a presigned URL of the bucket, with the headers HF clients read off the redirect
        head = httpx.head(f"{a}/alice/fr/resolve/main/adapter_model.safetensors")
        assert head.status_code == 302 and head.headers["location"].startswith(s3.endpoint)
        assert head.headers["x-repo-commit"] == published.json()["revision"]
        assert head.headers["x-linked-size"] == str((folder / "adapter_model.safetensors").stat().st_size)
        pulled = pull_and_hf_download(a, token, tmp_path)
        for name, data in pulled.items():
            assert bytes.fromhex(data) == (folder / name).read_bytes(), name
        # a delete on B is seen by A
        assert httpx.delete(f"{b}/v1/adapters/alice/fr", headers=auth).status_code == 200
        assert httpx.get(f"{a}/v1/adapters/alice/fr").status_code == 404
        assert httpx.post(f"{a}/v1/search", json={"query": "French translation"}).json()["results"] == []
    objects = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1").list_objects_v2(Bucket=bucket)
    assert objects.get("KeyCount", 0) == 0  # its blobs went with it


def pull_and_hf_download(url: str, token: str, tmp_path: Path) -> dict[str, str]:
    """Hub.pull and hf_hub_download through a hub that redirects to the bucket (both follow it)."""
    script = f"""
import json, os
from huggingface_hub import hf_hub_download
from quiver_hub import Hub
folder = Hub({url!r}, {token!r}, cache_dir={str(tmp_path / "qcache")!r}).pull("alice/fr")
out = {{name: open(folder / name, "rb").read().hex() for name in ("adapter_config.json", "README.md")}}
out["adapter_model.safetensors"] = open(hf_hub_download("alice/fr", "adapter_model.safetensors"), "rb").read().hex()
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "QUIVER_"))}
    env.update(HF_ENDPOINT=url, HF_TOKEN=token, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf"))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_hub_killed_during_a_multipart_upload_leaves_nothing_visible(
    database_url: str, s3: S3, tmp_path: Path
) -> None:
    bucket = s3.bucket()
    env = hub_env(database_url, s3, bucket, tmp_path / "home")
    token = operator_token(env, "alice")
    big = tmp_path / "big"  # ~67 MB of weights: uploaded in 16 MB parts
    factors = {
        f"model.layers.{i}.self_attn.{p}": (torch.randn(16, 4096), torch.randn(4096, 16))
        for i in range(32)
        for p in ("q_proj", "k_proj", "v_proj", "o_proj")
    }
    from tests.support.adapters import lora_config, write_factors

    write_factors(big, factors, lora_config(r=16, targets=["q_proj", "k_proj", "v_proj", "o_proj"]))
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    log = tmp_path / "serve.log"
    with serve_process(env, log=log) as url:
        server_pid = int(next(p for p in os.listdir("/proc") if p.isdigit() and is_server(p, env["QUIVER_PORT"])))
        sender = subprocess.Popen(
            [sys.executable, "-c", UPLOAD, url, token, str(big)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while not client.list_multipart_uploads(Bucket=bucket).get("Uploads"):
            assert time.monotonic() < deadline and sender.poll() is None, log.read_text()[-3000:]
            time.sleep(0.01)
        os.kill(server_pid, signal.SIGKILL)  # in the middle of the upload
        sender.wait(timeout=60)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads")  # parts left behind
    with serve_process(env) as url:  # restarted: nothing of it is visible
        assert httpx.get(f"{url}/v1/adapters/alice/big").status_code == 404
    gc = quiver(env, "gc", "--grace", "0")
    assert gc.returncode == 0, gc.stderr
    assert "abandoned uploads" in gc.stdout and not gc.stdout.rstrip().endswith(" 0 abandoned uploads")
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


UPLOAD = """
import sys, httpx
from pathlib import Path
from tests.support.adapters import upload_parts
url, token, folder = sys.argv[1:]
try:
    httpx.post(f"{url}/v1/adapters/alice/big", files=upload_parts(Path(folder)),
               headers={"Authorization": f"Bearer {token}"}, timeout=300)
except httpx.TransportError:
    pass
"""


def is_server(pid: str, port: str) -> bool:
    """Whether /proc/<pid> is the `quiver serve` listening on `port` (its environment names it)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"serve" in cmdline and f"QUIVER_PORT={port}".encode() in environ
