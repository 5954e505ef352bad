"""The hub's resident memory per Llama-7B-shaped adapter, measured from the process, and publish times.

    python -m bench.bench_memory                          # 40 adapters published one by one (~3 min)
    python -m bench.bench_memory --loaded 1000,10000      # and hubs started on 1k and 10k of them (~5 min)
    python -m bench.bench_memory --route-modules '.*'     # every module routed

A real `quiver serve` on its defaults (SQLite and local files under a temporary QUIVER_HOME) takes rank-16
adapters of a Llama-2-7B shape (32 layers x q, k, v, o, gate, up, down; bf16, 80 MB each, random factors)
pushed one at a time through HubClient.push. After each, the server's VmRSS is read from /proc. The first
publish loads what every publish needs (the text embedder, torch's kernels), so growth is counted from
after it. After each publish a route-modules request makes the indexes catch up, as a hub that routes
does. The index's own bytes per adapter come from PrototypeIndex's layout for the modules the hub
routes on. Then the hub restarts on the same home (from the snapshot it saved) and its RSS is read
again, against an empty hub's.

With --loaded, hubs of 1,000 and 10,000 such adapters are bulk-loaded into SQLite (bench/bench_route.py's
random unit prototypes, of the modules routed on), and a `quiver serve` started on each is read after it
is ready and has written the snapshot of the indexes it built (from a copy of the float32 prototypes, in
the background), and again after 20 route requests: what an operator's hub of that size holds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from safetensors.numpy import save as save_np
from safetensors.torch import save_file

from bench.bench_route import BASE as BENCH_BASE
from bench.bench_route import Prototypes, fill
from bench.common import table
from quiver_hub.api import HubClient
from quiver_hub.hub.services import Services
from quiver_hub.hub.settings import Settings
from quiver_hub.registry.lora.algebra import factor_key
from quiver_hub.registry.search.prototype_index import PrototypeIndex
from quiver_hub.registry.search.route_modules import DEFAULT_ROUTE_MODULES, ModuleChoice
from quiver_hub.registry.search.row_store import Spill
from quiver_hub.registry.search.snapshot import MANIFEST
from tests.support.servers import free_port, operator_token, serve_child

BASE = "meta-llama/Llama-2-7b-hf"
RANK = 16
PROJECTIONS = {  # name -> (in_features, out_features)
    **{f"self_attn.{x}_proj": (4096, 4096) for x in "qkvo"},
    "mlp.gate_proj": (4096, 11008),
    "mlp.up_proj": (4096, 11008),
    "mlp.down_proj": (11008, 4096),
}
MODULES = {f"model.layers.{i}.{p}": shape for i in range(32) for p, shape in PROJECTIONS.items()}


def write_7b_adapter(folder: Path, seed: int) -> Path:
    """A PEFT folder of a rank-16 adapter on every projection of a Llama-2-7B (bf16: 80 MB)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (fan_in, fan_out) in MODULES.items():
        tensors[factor_key(module, "A")] = (torch.randn(RANK, fan_in, generator=g) / fan_in**0.5).bfloat16()
        tensors[factor_key(module, "B")] = (torch.randn(fan_out, RANK, generator=g) / RANK).bfloat16()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": RANK,
        "lora_alpha": 2 * RANK,
        "target_modules": sorted({p.rsplit(".", 1)[1] for p in PROJECTIONS}),
        "base_model_name_or_path": BASE,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def rss(process: subprocess.Popen) -> int:
    """The process's resident set, in bytes (VmRSS)."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def index_bytes(modules: list[str]) -> tuple[int, int]:
    """What PrototypeIndex holds per adapter for these modules: in memory once its rows are in a file (int8
    codes, norms, id), and its float32 rows (in memory too while a module's rows are few)."""
    held = rows = 0
    for module in modules:
        index = PrototypeIndex(MODULES[module][0], Spill(at_bytes=0))
        index.add([1], np.ones((1, index.dim), dtype=np.float32))
        held, rows = held + index.memory_bytes(), rows + index.file_bytes()
    return held, rows


def loaded_hub(n: int, route_modules: str, env: dict[str, str], home: Path) -> tuple[int, int, int]:
    """(n, RSS once ready, RSS after 20 routes) of a `quiver serve` on n bulk-loaded 7B-shaped adapters."""
    widths = {m: MODULES[m][0] for m in ModuleChoice(route_modules).of_adapter(MODULES)}
    state = Services.open(Settings(home=home, route_modules=route_modules))  # migrated, no indexes
    assert n * max(widths.values()) * 4 >= Settings(**spill_setting(env)).index_spill_bytes, "rows in memory"
    fill(state, Prototypes(n, widths, seed=n))
    state.close()
    env = {**env, "QUIVER_HOME": str(home), "QUIVER_PORT": str(free_port())}
    rng = np.random.default_rng(0)
    settings = Settings(home=home, route_modules=route_modules)
    with serve_child(env, timeout=600) as (url, server):
        # A hub that built its indexes from the database writes their snapshot in the background, from a
        # copy of the float32 prototypes; read once it is on disk
        deadline = time.monotonic() + 600
        while not (settings.index_dir / MANIFEST).exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        ready = rss(server)
        with httpx.Client(base_url=url, timeout=120) as c:
            for _ in range(20):
                body = save_np({m: rng.standard_normal((16, w), dtype=np.float32) for m, w in widths.items()})
                r = c.post(
                    "/v1/route",
                    content=body,
                    params={"base_model": BENCH_BASE, "top_k": 3},
                    headers={"Content-Type": "application/octet-stream"},
                )
                assert r.status_code == 200, r.text
        return n, ready, rss(server)


def spill_setting(env: dict[str, str]) -> dict[str, int]:
    """QUIVER_INDEX_SPILL_BYTES as the hubs of `env` have it (none: the hub's default)."""
    return {"index_spill_bytes": int(env["QUIVER_INDEX_SPILL_BYTES"])} if "QUIVER_INDEX_SPILL_BYTES" in env else {}


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", type=int, default=40)
    parser.add_argument("--loaded", default="", help="comma separated library sizes, e.g. 1000,10000")
    parser.add_argument(
        "--route-modules", default=DEFAULT_ROUTE_MODULES, help="QUIVER_ROUTE_MODULES ('.*': every module)"
    )
    parser.add_argument(
        "--spill-bytes",
        type=int,
        default=None,
        help="QUIVER_INDEX_SPILL_BYTES (default: the hub's, 8 MiB a module; 0: every module's rows in a file "
        "from the first publish, as on a large hub)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        env = {**os.environ, "QUIVER_HOME": str(home), "QUIVER_PORT": str(free_port())}
        if args.route_modules != DEFAULT_ROUTE_MODULES:
            env["QUIVER_ROUTE_MODULES"] = args.route_modules
        if args.spill_bytes is not None:
            env["QUIVER_INDEX_SPILL_BYTES"] = str(args.spill_bytes)
        env.pop("QUIVER_DATABASE_URL", None)
        token = operator_token(env, "bench")
        folders = [write_7b_adapter(Path(tmp) / "a0", 0)]
        with serve_child(env) as (url, server):
            empty = rss(server)
            hub = HubClient(url, token=token)
            after, publish_s = [], []
            for i in range(args.adapters):
                folder = folders[-1]
                t = time.perf_counter()
                hub.push(folder, f"bench/a{i}", description="bench", visibility="public")
                publish_s.append(time.perf_counter() - t)
                hub.route_modules(BASE, fresh=True)  # the indexes catch up, as on a hub that routes
                after.append(rss(server))
                write_7b_adapter(folder, i + 1)  # the next one, written while nothing is timed
            routed = list(hub.route_modules(BASE)["modules"])
        with serve_child(env) as (url, server):
            restarted = rss(server)
        sizes = [int(n) for n in args.loaded.split(",") if n]
        loaded = [loaded_hub(n, args.route_modules, env, Path(tmp) / f"loaded-{n}") for n in sizes]
    n = args.adapters - 1
    slope = float(np.polyfit(np.arange(n), np.array(after[1:], dtype=np.float64), 1)[0]) if n > 1 else 0.0
    if os.environ.get("QUIVER_BENCH_VERBOSE"):
        print("RSS after each publish (MiB):", " ".join(f"{a / 2**20:.0f}" for a in after))
    per_adapter = (after[-1] - after[0]) / n
    held, rows_bytes = index_bytes(routed)
    per_module = rows_bytes // max(1, len(routed))  # float32 rows of one module, per adapter
    spilled_at = Settings(**spill_setting(env)).index_spill_bytes
    # a module's rows go to a file past the spill size: at the publishes' count or not
    index = held if args.adapters * per_module >= spilled_at else held + rows_bytes
    on = "its defaults" if args.route_modules == DEFAULT_ROUTE_MODULES else f"QUIVER_ROUTE_MODULES={args.route_modules}"
    print(
        f"quiver serve on {on} (routes on {len(routed)} of {len(MODULES)} modules); "
        f"{args.adapters} Llama-2-7B-shaped rank-{RANK} adapters (bf16, 80 MB) pushed one by one"
    )
    rows = [
        ["empty hub (MiB)", mib(empty)],
        ["after the first publish (MiB)", mib(after[0])],
        [f"after {args.adapters} (MiB)", mib(after[-1])],
        [
            "RSS growth per adapter after the first: (last - first) / n, slope (KiB)",
            f"{per_adapter / 1024:,.1f}, {slope / 1024:,.1f}",
        ],
        [
            "index bytes per adapter in memory, the rows in memory / in a file (KiB)",
            f"{(held + rows_bytes) / 1024:,.1f} / {held / 1024:,.1f} (this run: {index / 1024:,.1f})",
        ],
        ["RSS growth / index bytes: (last - first) / n, slope", f"{per_adapter / index:.2f}x, {slope / index:.2f}x"],
        ["restarted from the snapshot (MiB)", mib(restarted)],
        ["restarted, per adapter over the empty hub (KiB)", f"{(restarted - empty) / args.adapters / 1024:,.1f}"],
        ["publish, client's wall time: median / max (s)", f"{statistics.median(publish_s):.2f} / {max(publish_s):.2f}"],
    ]
    print(table(["measure", "value"], rows))
    if loaded:
        print(
            "\nHubs started on a bulk-loaded library (SQLite), the same modules: RSS over the empty hub's "
            f"({mib(empty)} MiB), per adapter, against the index's bytes in memory ({held / 1024:,.1f} KiB an "
            f"adapter; its float32 rows, {rows_bytes / 1024:,.1f} KiB, in files)"
        )
        heads = [
            "adapters",
            "RSS ready (MiB)",
            "per adapter (KiB)",
            "/ index",
            "after 20 routes (MiB)",
            "per adapter (KiB)",
            "/ index",
        ]
        out = []
        for n, ready, routed_rss in loaded:
            out.append(
                [
                    f"{n:,}",
                    mib(ready),
                    f"{(ready - empty) / n / 1024:,.1f}",
                    f"{(ready - empty) / n / held:.2f}x",
                    mib(routed_rss),
                    f"{(routed_rss - empty) / n / 1024:,.1f}",
                    f"{(routed_rss - empty) / n / held:.2f}x",
                ]
            )
        print(table(heads, out))
        for (a, _, rss_a), (b, _, rss_b) in zip(loaded, loaded[1:], strict=False):
            marginal = (rss_b - rss_a) / (b - a)
            print(
                f"From {a:,} to {b:,} adapters, after routes: {marginal / 1024:,.1f} KiB an adapter, "
                f"{marginal / held:.2f}x the index's bytes in memory"
            )


if __name__ == "__main__":
    main()
