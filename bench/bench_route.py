r"""/v1/route over HTTP with 1k, 10k and 100k synthetic adapters, against brute-force numpy on the
same prototypes; start-up (indexes built from the database, then a restart from their snapshot) and memory.

    python -m bench.bench_route [--sizes 1000,10000,100000]
    python -m bench.bench_route --sizes 100000,1000000 --requests 5 --db postgres   # start-up rows
    python -m bench.bench_route --sizes 1000,10000 --shape 7b     # the hub's default modules (32 of 224)
    python -m bench.bench_route --shape 7b --sizes 1000 --route-modules '.*'   # every module
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn
from safetensors.numpy import save
from sqlalchemy import insert, text

from bench.common import table
from quiver_hub.hub.app import create_app
from quiver_hub.hub.services import Services
from quiver_hub.hub.settings import Settings
from quiver_hub.registry.models import AdapterRepo, Namespace, Prototype, Version, utcnow
from quiver_hub.registry.search.prototype_index import h_levels, int8_products, quantise, row_ranges
from quiver_hub.registry.search.route_modules import DEFAULT_ROUTE_MODULES, ModuleChoice

BASE = "bench/base"
TOKENS, TOP_K, REQUESTS = 16, 3, 100
# module -> in_features. "tiny": 2 modules of 512; "7b": a Llama-2-7B-shaped adapter on every projection
# (224 modules: q, k, v, o, gate, up take 4096 values, down 11008), 4.3 MiB of float32 prototypes.
SHAPES = {
    "tiny": {"model.layers.0.self_attn.q_proj": 512, "model.layers.0.self_attn.v_proj": 512},
    "7b": {
        f"model.layers.{i}.{p}": 11008 if p == "mlp.down_proj" else 4096
        for i in range(32)
        for p in [f"self_attn.{x}_proj" for x in "qkvo"] + ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    },
}
POSTGRES = os.environ.get("QUIVER_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


class Prototypes:
    """The bench's random unit prototypes, n adapters x the modules of `widths`, made chunk by chunk from a
    seed, so that a library larger than memory can be filled and checked; held whole (and the brute force
    timed) only up to HOLD_BYTES."""

    CHUNK = 10_000
    HOLD_BYTES = 2 << 30

    def __init__(self, n: int, widths: dict[str, int], seed: int):
        self.n, self.widths, self.seed = n, widths, seed
        held = n * sum(widths.values()) * 4 <= self.HOLD_BYTES
        self.held = self._make(0, n) if held else None

    def _make(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, lo, hi))
        out = {m: rng.standard_normal((hi - lo, w), dtype=np.float32) for m, w in self.widths.items()}
        for v in out.values():
            v /= np.linalg.norm(v, axis=1, keepdims=True)
        return out

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        if self.held is not None:
            yield 0, self.held
            return
        for lo in range(0, self.n, size):
            yield lo, self._make(lo, min(self.n, lo + size))


def fill(state: Services, protos: Prototypes) -> None:
    """n public adapters with one version and a random unit prototype per module, inserted in bulk."""
    widths = protos.widths
    now = utcnow()
    batch = max(1, 2000 // len(widths))  # adapters per insert: about 2,000 prototype rows
    with state.sessions() as s:
        s.execute(insert(Namespace), [{"id": 1, "name": "bench", "kind": "user", "created_at": now}])
        for start, chunk in protos.chunks():
            size = len(next(iter(chunk.values())))
            for lo in range(start, start + size, batch):
                ids = range(lo + 1, min(start + size, lo + batch) + 1)
                s.execute(
                    insert(AdapterRepo),
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
                            target_modules=list(widths),
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
                        dict(version_id=i, module=m, in_features=w, sigma=1.0, vector=chunk[m][i - 1 - start].tobytes())
                        for i in ids
                        for m, w in widths.items()
                    ],
                )
        s.commit()


def brute_force(protos: Prototypes, hidden: dict[str, np.ndarray]) -> np.ndarray:
    """the routing formula (docs/architecture.md) over every adapter, dense numpy: the baseline."""
    scores = np.zeros(protos.n)
    logits = {m: np.empty((len(h), protos.n), dtype=np.float32) for m, h in hidden.items()}
    for start, chunk in protos.chunks():
        for m, h in hidden.items():
            logits[m][:, start : start + len(chunk[m])] = np.abs(h @ chunk[m].T)  # tokens x adapters
    for m, h in hidden.items():
        top = np.argpartition(-logits[m], TOP_K - 1, axis=1)[:, :TOP_K]
        vals = np.take_along_axis(logits[m], top, axis=1)
        w = np.exp(vals - vals.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        np.add.at(scores, top.ravel(), w.ravel() / (len(hidden) * len(h)))
    return scores


def int8_pass(protos: Prototypes, hidden: dict[str, np.ndarray]) -> float:
    """The floor of the hub's method: only its int8 x int8 products (the levels of h against every code),
    in process, spread over the cores as the hub spreads a request's modules, or one module's rows in
    ranges when it has fewer modules than cores and enough rows (routing.score_modules; median of 5)."""
    codes = {m: torch.from_numpy(quantise(v)[0]) for m, v in protos.held.items()}
    levels = {m: torch.from_numpy(h_levels(h, h.shape[1])[0]) for m, h in hidden.items()}
    cores = len(os.sched_getaffinity(0))
    split = cores // len(levels) if len(levels) < cores else 1
    jobs = [(m, lo, hi) for m in levels for lo, hi in row_ranges(len(codes[m]), split)]
    times = []
    with ThreadPoolExecutor(cores) as pool:
        for _ in range(6):  # the first warms the threads and oneDNN's kernels up
            t = time.perf_counter()
            list(pool.map(lambda job: int8_products(codes[job[0]][job[1] : job[2]], levels[job[0]]), jobs))
            times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def serve(settings: Settings, port: int) -> tuple[uvicorn.Server, threading.Thread, float]:
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    t = time.perf_counter()
    thread.start()
    while not server.started:
        time.sleep(0.05)
    ready = time.perf_counter() - t
    app.state.services.saves.submit(lambda: None).result()  # the snapshot written after start, not timed
    return server, thread, ready


def kib(size: float) -> str:
    return f"{size / 1024:,.1f}"


def database_bytes(state: Services) -> int:
    """The database's size on disk: the SQLite file, or pg_database_size."""
    if state.engine.dialect.name == "sqlite":
        return Path(state.engine.url.database).stat().st_size
    with state.engine.connect() as conn:
        return conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()


def fresh_postgres(url: str) -> str:
    """A new empty database `quiver_bench` on the server of `url` (dropped first if there)."""
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS quiver_bench WITH (FORCE)")
        conn.execute("CREATE DATABASE quiver_bench")
    return url.rsplit("/", 1)[0] + "/quiver_bench"


def run(n: int, port: int, db: str, requests: int, widths: dict[str, int], route_modules: str = "") -> list[object]:
    rng = np.random.default_rng(n)
    with tempfile.TemporaryDirectory() as home:
        db_url = fresh_postgres(POSTGRES) if db == "postgres" else None
        settings = Settings(
            home=Path(home), database_url=db_url, max_route_bytes=256 << 20, route_modules=route_modules
        )
        state = Services.open(settings)
        t = time.perf_counter()
        protos = Prototypes(n, widths, seed=n)
        fill(state, protos)
        fill_s = time.perf_counter() - t
        state.close()
        server, thread, start_s = serve(settings, port)
        try:
            queries = [
                {m: rng.standard_normal((TOKENS, w), dtype=np.float32) for m, w in widths.items()}
                for _ in range(requests)
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
            brute = []
            for i in range(5 if protos.held is not None else 0):  # timed only when held in memory
                t = time.perf_counter()
                brute_force(protos, queries[i % len(queries)])
                brute.append(time.perf_counter() - t)
            floor = int8_pass(protos, queries[0]) if protos.held is not None else None
            memory = server.config.app.state.services.indexes.memory_bytes()
            in_files = server.config.app.state.services.indexes.file_bytes()
            db_bytes = database_bytes(server.config.app.state.services)
        finally:
            server.should_exit = True  # saves the indexes' snapshot on the way out
            thread.join()
        server, thread, restart_s = serve(settings, port)
        try:
            assert server.config.app.state.services.opened.from_snapshot, "the restart did not use the snapshot"
            with httpx.Client(timeout=120, headers={"Content-Type": "application/octet-stream"}) as c:
                again = c.post(url, content=bodies[0], params=params).json()["results"]
            assert [x["id"] for x in again] == [x["id"] for x in first], "the ranking after a restart differs"
            assert np.allclose([x["score"] for x in again], [x["score"] for x in first], rtol=0, atol=1e-6)
        finally:
            server.should_exit = True
            thread.join()
        snapshot_bytes = sum(p.stat().st_size for p in settings.index_dir.iterdir())
    lat = sorted(latencies)
    p50, p99 = statistics.median(lat), lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    return [
        f"{n:,}",
        db,
        f"{fill_s:.1f}",
        f"{start_s:.1f}",
        f"{restart_s:.1f}",
        f"{1e3 * p50:.1f}",
        f"{1e3 * p99:.1f}",
        f"{throughput:.1f}",
        f"{1e3 * statistics.median(brute):.1f}" if brute else "-",
        f"{1e3 * floor:.1f}" if floor is not None else "-",
        f"{memory / 2**20:.0f}",
        kib(memory / n),
        kib(in_files / n),
        kib(db_bytes / n),
        kib(snapshot_bytes / n),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--db", default="sqlite", help="sqlite, postgres or both (Postgres: QUIVER_BENCH_POSTGRES)")
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny")
    parser.add_argument(
        "--route-modules",
        default=DEFAULT_ROUTE_MODULES,
        help="QUIVER_ROUTE_MODULES for the hub (default: its own default; '.*': every module); only those "
        "modules' prototypes are loaded and routed on",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `quiver serve` sets it
    sizes = [int(s) for s in args.sizes.split(",")]
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    from tests.support.servers import free_port

    widths = {m: SHAPES[args.shape][m] for m in ModuleChoice(args.route_modules).of_adapter(SHAPES[args.shape])}
    rows = [run(n, free_port(), db, args.requests, widths, args.route_modules) for n in sizes for db in dbs]
    dims = "/".join(str(w) for w in sorted(set(widths.values())))
    print(
        f"/v1/route over HTTP: {len(widths)} modules x {TOKENS} tokens of dim {dims}, top_k={TOP_K}, "
        f"safetensors body; {args.requests} sequential requests (p50/p99), then 4 concurrent clients (throughput); "
        "brute force = the same formula in dense numpy, in process, no HTTP (median of 5); int8 pass alone = only the "
        "hub's int8 products over the same codes, in process, on the hub's threads: the floor of its method; "
        "start = process start to serving, indexes built from the database; "
        "restart = the same from the snapshot saved at shutdown"
        + f"; QUIVER_ROUTE_MODULES={args.route_modules} ({args.shape} adapters; the database holds only the "
        "prototypes of the modules routed on)"
    )
    print(
        table(
            [
                "adapters",
                "database",
                "load DB (s)",
                "start, index built (s)",
                "restart from snapshot (s)",
                "p50 (ms)",
                "p99 (ms)",
                "throughput (req/s)",
                "brute-force numpy (ms)",
                "int8 pass alone (ms)",
                "index memory (MiB)",
                "index RAM / adapter (KiB)",
                "float32 rows in files / adapter (KiB)",
                "database / adapter (KiB)",
                "snapshot / adapter (KiB)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
