"""Upload and download throughput of a 40 MB adapter through the local store and through an S3-compatible
store (moto's server on loopback), proxied by the hub and redirected to a presigned URL, and through nginx
in front of the local store (docs/nginx.conf, X-Accel-Redirect), in one run.

    python -m bench.bench_blobs [--repeat 3]

Each row: a real `quiver serve` on SQLite; upload = POST /v1/adapters (staging, validation, analysis,
install); download = GET .../files/adapter_model.safetensors, the client following any redirect. The
S3 proxied row is measured cold (the hub's read cache empty: fetched from the bucket first) and warm.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch

from bench.common import table
from tests.support.adapters import lora_config, upload_parts, write_factors
from tests.support.nginx import nginx
from tests.support.servers import free_port, operator_token, serve_process

MB = 1e6


def adapter(folder: Path) -> Path:
    """~40 MB: rank 16 on q, k, v, o of 20 layers at width 4096 (fp32)."""
    g = torch.Generator().manual_seed(0)
    factors = {
        f"model.layers.{i}.self_attn.{p}": (torch.randn(16, 4096, generator=g), torch.randn(4096, 16, generator=g))
        for i in range(20)
        for p in ("q_proj", "k_proj", "v_proj", "o_proj")
    }
    return write_factors(folder, factors, lora_config(r=16, targets=["q_proj", "k_proj", "v_proj", "o_proj"]))


def moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(endpoint, timeout=1)
            return proc, endpoint
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("moto_server did not start")


@contextmanager
def fronted(env: dict[str, str], proxy: bool) -> Iterator[str]:
    """A real `quiver serve`, and (proxy) docs/nginx.conf in front of it; yields the URL clients use."""
    with serve_process(env) as url:
        if not proxy:
            yield url
            return
        home = Path(env["QUIVER_HOME"])
        with nginx(url, home, home.parent / f"{home.name}-nginx") as proxied:
            yield proxied


def hub_cpu_seconds(port: str) -> float:
    """User + system CPU time so far of the `quiver serve` process listening on `port` (Linux /proc)."""
    for proc in Path("/proc").iterdir():
        try:
            if (
                b"QUIVER_PORT=" + port.encode() + b"\0" in (proc / "environ").read_bytes()
                and b"serve" in (proc / "cmdline").read_bytes()
            ):
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            continue
    raise RuntimeError(f"no quiver serve on port {port}")


CLIENTS = 8


def many_clients(url: str, token: str, size: int, port: str, rounds: int = 3) -> tuple[float, float]:
    """CLIENTS curl processes downloading the same file `rounds` times each at once (curl, so that no
    client's own Python bounds the rate): (aggregate MB/s, hub CPU seconds per GB)."""
    cmd = ["curl", "-sfL", "-H", f"Authorization: Bearer {token}", *["-o", "/dev/null", url] * rounds]
    cpu, t = hub_cpu_seconds(port), time.perf_counter()
    procs = [subprocess.Popen(cmd) for _ in range(CLIENTS)]
    assert all(p.wait() == 0 for p in procs), "a download failed"
    wall, moved = time.perf_counter() - t, size * rounds * CLIENTS
    return moved / wall / MB, (hub_cpu_seconds(port) - cpu) / (moved / 1e9)


def measure(
    env: dict[str, str], folder: Path, repeat: int, cold_cache: Path | None, proxy: bool = False
) -> tuple[list, list, list, list, tuple[float, float]]:
    size = (folder / "adapter_model.safetensors").stat().st_size
    token = operator_token(env, "bench")
    uploads, colds, warms, hub_cpu = [], [], [], []
    with fronted(env, proxy) as url, httpx.Client(timeout=600, follow_redirects=True) as c:
        auth = {"Authorization": f"Bearer {token}"}
        for i in range(repeat):
            t = time.perf_counter()
            r = c.post(f"{url}/v1/adapters/bench/a{i}", files=upload_parts(folder), headers=auth)
            uploads.append(size / (time.perf_counter() - t) / MB)
            assert r.status_code == 201, r.text
            path = f"{url}/v1/adapters/bench/a{i}/versions/1/files/adapter_model.safetensors"
            if cold_cache is not None:
                for p in cold_cache.iterdir():
                    p.unlink()
            t = time.perf_counter()
            body = c.get(path).content
            colds.append(size / (time.perf_counter() - t) / MB)
            assert len(body) == size
            t, cpu = time.perf_counter(), hub_cpu_seconds(env["QUIVER_PORT"])
            assert len(c.get(path).content) == size
            warms.append(size / (time.perf_counter() - t) / MB)
            hub_cpu.append((hub_cpu_seconds(env["QUIVER_PORT"]) - cpu) * 1000)
        crowd = many_clients(path, token, size, env["QUIVER_PORT"])
    return uploads, colds, warms, hub_cpu, crowd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith("QUIVER_")}
    base.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", QUIVER_MAX_UPLOAD_BYTES=str(256 << 20))
    proc, endpoint = moto()
    rows = []
    try:
        import boto3

        with tempfile.TemporaryDirectory() as tmp:
            folder = adapter(Path(tmp) / "adapter")
            size = (folder / "adapter_model.safetensors").stat().st_size
            boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
            ).create_bucket(Bucket="bench")
            s3 = {"QUIVER_BLOB_URL": "s3://bench/blobs", "QUIVER_S3_ENDPOINT_URL": endpoint}
            accel = {"QUIVER_ACCEL_REDIRECT": "/_quiver_blobs/"}
            cases = [
                ("local directory (streamed by the hub)", {}, False, False),
                ("local directory, nginx in front (X-Accel-Redirect)", accel, False, True),
                ("S3, proxied by the hub", {**s3, "QUIVER_DOWNLOAD_REDIRECT": "0"}, True, False),
                ("S3, redirected to a presigned URL", {**s3, "QUIVER_DOWNLOAD_REDIRECT": "1"}, False, False),
            ]
            for i, (label, extra, cold, proxy) in enumerate(cases):
                home = Path(tmp) / f"home{i}"
                env = {**base, **extra, "QUIVER_HOME": str(home), "QUIVER_PORT": str(free_port())}
                cache = home / "blobs" / "cache" if cold else None
                up, first, again, cpu, (crowd, crowd_cpu) = measure(env, folder, args.repeat, cache, proxy)
                med = statistics.median
                rows.append(
                    [
                        label,
                        f"{med(up):.0f}",
                        f"{med(first):.0f}" + (" (cold cache)" if cold else ""),
                        f"{med(again):.0f}",
                        f"{med(cpu):.0f}",
                        f"{crowd:.0f}",
                        f"{crowd_cpu:.2f}",
                    ]
                )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
    print(f"A {size / MB:.0f} MB adapter, median of {args.repeat} runs, MB/s (one client on loopback, SQLite)")
    headers = ["blob store", "upload (publish)", "download", "download again", "hub CPU ms / download"]
    print(table([*headers, f"{CLIENTS} clients (MB/s, curl)", f"{CLIENTS} clients: hub CPU s / GB"], rows))
    print("hub CPU: what the `quiver serve` process spent on downloads; nginx's and S3's not counted")


if __name__ == "__main__":
    main()
