"""What `quiver gateway` adds to a chat request's latency: the same requests sent straight to an engine,
through the gateway with the adapter named (the proxy alone), and through it with `quiver:auto` (routing
on the hub, then the proxy), with a library of adapters on a real `quiver serve`.

    python -m bench.bench_gateway [--adapters 200] [--requests 100]

The engine is the tests' OpenAI-compatible stand-in (tests/system/test_gateway.py), which answers at once: what is
measured is the gateway's and the hub's time, not a model's. Medians and 99th percentiles over the
requests, one client at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import table
from tests.support.adapters import BASE, upload_parts, write_adapter
from tests.support.servers import free_port, operator_token, serve_process
from tests.system.test_gateway import fake_engine, serve_in_thread

TOPICS = ["French", "German", "SQL", "Python", "poems", "summaries", "recipes", "chess", "law", "medicine"]


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=200)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="quiver-gateway-bench-"))
    env = {**os.environ, "QUIVER_HOME": str(work / "home"), "QUIVER_PORT": str(free_port())}
    token = operator_token(env, "bench")
    engine_app, _ = fake_engine()
    engine_url, engine = serve_in_thread(engine_app)
    with serve_process(env) as hub_url, httpx.Client(headers={"Authorization": f"Bearer {token}"}) as c:
        for i in range(args.adapters):
            topic = TOPICS[i % len(TOPICS)]
            examples = "\n".join(json.dumps({"input": f"Help me with {topic}, case {i}.{j}"}) for j in range(5))
            folder = write_adapter(work / f"a{i}", seed=i, extra_files={"examples.jsonl": examples.encode()})
            r = c.post(f"{hub_url}/v1/adapters/bench/a{i}", files=upload_parts(folder), data={"description": topic})
            r.raise_for_status()
        port = free_port()
        gateway_env = {**os.environ, "QUIVER_ENDPOINT": hub_url, "QUIVER_TOKEN": token}
        cmd = [sys.executable, "-m", "quiver_hub", "gateway", "--engine", engine_url, "--base-model", BASE]
        gateway = subprocess.Popen([*cmd, "--port", str(port)], env=gateway_env)
        gateway_url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    httpx.get(f"{gateway_url}/v1/models", timeout=2)
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            rows = []
            with httpx.Client(timeout=60) as client:
                for label, url, model in (
                    ("straight to the engine", engine_url, "bench/a0@1"),
                    ("gateway, adapter named", gateway_url, "bench/a0@1"),
                    ("gateway, quiver:auto", gateway_url, "quiver:auto"),
                ):
                    samples = []
                    for n in range(args.requests + 5):
                        text = f"Help me with {TOPICS[n % len(TOPICS)]}, please"
                        body = {"model": model, "messages": [{"role": "user", "content": text}]}
                        started = time.perf_counter()
                        client.post(f"{url}/v1/chat/completions", json=body).raise_for_status()
                        if n >= 5:  # the first few warm the connections and the embedder
                            samples.append(time.perf_counter() - started)
                    p50, p99 = percentiles(samples)
                    rows.append([label, f"{p50:.1f}", f"{p99:.1f}"])
            added = [float(rows[1][1]) - float(rows[0][1]), float(rows[2][1]) - float(rows[0][1])]
            print(f"{args.adapters} adapters with examples, {args.requests} requests each, one at a time\n")
            print(table(["path", "p50 ms", "p99 ms"], rows))
            print(f"\nadded at p50: {added[0]:.1f} ms to proxy, {added[1]:.1f} ms to route and proxy")
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
            engine.should_exit = True


if __name__ == "__main__":
    main()
