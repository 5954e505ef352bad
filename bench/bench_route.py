"""/v1/route over HTTP with 1k, 10k and 100k synthetic adapters, against brute-force numpy on the
same prototypes; index build time and memory.

    python bench/bench_route.py [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from safetensors.numpy import save
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import table  # noqa: E402
from quiver_hub.hub.app import create_app  # noqa: E402
from quiver_hub.hub.services import Services  # noqa: E402
from quiver_hub.hub.settings import Settings  # noqa: E402
from quiver_hub.registry.models import Adapter, Namespace, Prototype, Version, utcnow  # noqa: E402

BASE = "bench/base"
MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
DIM, TOKENS, TOP_K, REQUESTS = 512, 16, 3, 100


def fill(state: Services, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """n public adapters with one version and a random unit prototype per module, inserted in bulk."""
    protos = {m: rng.standard_normal((n, DIM), dtype=np.float32) for m in MODULES}
    for v in protos.values():
        v /= np.linalg.norm(v, axis=1, keepdims=True)
    now = utcnow()
    with state.sessions() as s:
        s.execute(insert(Namespace), [{"id": 1, "name": "bench", "kind": "user", "created_at": now}])
        for lo in range(0, n, 5000):
            ids = range(lo + 1, min(n, lo + 5000) + 1)
            s.execute(
                insert(Adapter),
                [
                    dict(
                        id=i,
                        namespace_id=1,
                        name=f"a{i}",
                        base_model=BASE,
                        tags=[],
                        description="",
                        visibility="public",
                        last_version=1,
                        created_at=now,
                        updated_at=now,
                    )
                    for i in ids
                ],
            )
            s.execute(
                insert(Version),
                [
                    dict(
                        id=i,
                        adapter_id=i,
                        number=1,
                        revision=f"{i:040x}",
                        adapter_config={},
                        base_model=BASE,
                        rank=8,
                        alpha=8.0,
                        target_modules=MODULES,
                        num_parameters=0,
                        total_size=0,
                        created_at=now,
                    )
                    for i in ids
                ],
            )
            s.execute(
                insert(Prototype),
                [
                    dict(version_id=i, module=m, in_features=DIM, sigma=1.0, vector=protos[m][i - 1].tobytes())
                    for i in ids
                    for m in MODULES
                ],
            )
        s.commit()
    return protos


def brute_force(protos: dict[str, np.ndarray], hidden: dict[str, np.ndarray]) -> np.ndarray:
    """the routing formula (docs/architecture.md) over every adapter, dense numpy: the baseline."""
    n = next(iter(protos.values())).shape[0]
    scores = np.zeros(n)
    for m, h in hidden.items():
        logits = np.abs(h @ protos[m].T)  # tokens x n
        top = np.argpartition(-logits, TOP_K - 1, axis=1)[:, :TOP_K]
        vals = np.take_along_axis(logits, top, axis=1)
        w = np.exp(vals - vals.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        np.add.at(scores, top.ravel(), w.ravel() / (len(hidden) * len(h)))
    return scores


def serve(settings: Settings, port: int) -> tuple[uvicorn.Server, threading.Thread, float]:
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    t = time.perf_counter()
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, time.perf_counter() - t


def run(n: int, port: int) -> list[object]:
    rng = np.random.default_rng(n)
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), max_upload_bytes=64 << 20)
        state = Services.open(settings)
        t = time.perf_counter()
        protos = fill(state, n, rng)
        fill_s = time.perf_counter() - t
        state.close()
        server, thread, start_s = serve(settings, port)
        try:
            queries = [
                {m: rng.standard_normal((TOKENS, DIM), dtype=np.float32) for m in MODULES} for _ in range(REQUESTS)
            ]
            bodies = [save(q) for q in queries]
            params = {"base_model": BASE, "top_k": TOP_K, "limit": 10}
            url = f"http://127.0.0.1:{port}/v1/route"
            with httpx.Client(timeout=120, headers={"Content-Type": "application/octet-stream"}) as c:
                first = c.post(url, content=bodies[0], params=params).json()["results"]
                latencies = []
                for body in bodies:
                    t = time.perf_counter()
                    r = c.post(url, content=body, params=params)
                    latencies.append(time.perf_counter() - t)
                    assert r.status_code == 200
            expected = brute_force(protos, queries[0])
            top = np.argsort(-expected)[:10]
            assert [f"bench/a{i + 1}" for i in top] == [x["id"] for x in first], "ranking differs from brute force"
            assert np.allclose([x["score"] for x in first], expected[top], atol=1e-5)

            def client_loop(chunk: list[bytes]) -> None:
                with httpx.Client(timeout=120, headers={"Content-Type": "application/octet-stream"}) as c:
                    for body in chunk:
                        assert c.post(url, content=body, params=params).status_code == 200

            t = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(client_loop, [bodies[i::4] for i in range(4)]))
            throughput = len(bodies) / (time.perf_counter() - t)
            brute = [0.0] * 5
            for i in range(5):
                t = time.perf_counter()
                brute_force(protos, queries[i])
                brute[i] = time.perf_counter() - t
            memory = server.config.app.state.services.indexes.memory_bytes()
        finally:
            server.should_exit = True
            thread.join()
    lat = sorted(latencies)
    p50, p99 = statistics.median(lat), lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    return [
        f"{n:,}",
        f"{fill_s:.1f}",
        f"{start_s:.1f}",
        f"{1e3 * p50:.1f}",
        f"{1e3 * p99:.1f}",
        f"{throughput:.1f}",
        f"{1e3 * statistics.median(brute):.1f}",
        f"{memory / 2**20:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    from tests.conftest import free_port

    rows = [run(n, free_port()) for n in sizes]
    print(
        f"/v1/route over HTTP: {len(MODULES)} modules x {TOKENS} tokens of dim {DIM}, top_k={TOP_K}, "
        f"safetensors body; {REQUESTS} sequential requests (p50/p99), then 4 concurrent clients (throughput); "
        "brute force = the same formula in dense numpy, in process, no HTTP (median of 5)"
    )
    print(
        table(
            [
                "adapters",
                "load DB (s)",
                "hub start + index build (s)",
                "p50 (ms)",
                "p99 (ms)",
                "throughput (req/s)",
                "brute-force numpy (ms)",
                "index memory (MiB)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
