"""How fast `quiver` starts, beside `hf` (huggingface_hub's command line) on the same machine, in one run:
`quiver --help`, `quiver whoami`, `quiver search` and `quiver info` against a local `quiver serve`, and
`hf --help`. Whole processes, wall time, the median of several runs after a warm-up.

    python -m bench.bench_cli [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import table
from tests.support.adapters import upload_parts, write_adapter
from tests.support.servers import free_port, operator_token, serve_process


def wall(cmd: list[str], env: dict[str, str], runs: int) -> float:
    subprocess.run(cmd, env=env, capture_output=True, check=True)  # warm-up (and the check that it works)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=True)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="quiver-cli-bench-"))
    env = {**os.environ, "QUIVER_HOME": str(work / "home"), "QUIVER_PORT": str(free_port())}
    token = operator_token(env, "bench")
    bin_dir = Path(sys.executable).parent
    with serve_process(env) as url:
        files = upload_parts(write_adapter(work / "a"))
        auth = {"Authorization": f"Bearer {token}"}
        httpx.post(f"{url}/v1/adapters/bench/a", files=files, headers=auth, timeout=60).raise_for_status()
        client = {**os.environ, "QUIVER_ENDPOINT": url, "QUIVER_TOKEN": token, "HF_HOME": str(work / "hf")}
        quiver = str(bin_dir / "quiver")
        median_hf = wall([str(bin_dir / "hf"), "--help"], client, args.runs)
        rows = [["hf --help", f"{median_hf:.2f}", "1.00"]]
        for label, cmd in (
            ("quiver --help", [quiver, "--help"]),
            ("quiver whoami", [quiver, "whoami"]),
            ("quiver search", [quiver, "search", "a tiny adapter"]),
            ("quiver info", [quiver, "info", "bench/a"]),
            ("quiver list", [quiver, "list"]),
        ):
            t = wall(cmd, client, args.runs)
            rows.append([label, f"{t:.2f}", f"{t / median_hf:.2f}"])
    print(f"whole processes, median of {args.runs} after one warm-up; the quiver commands against a local hub\n")
    print(table(["command", "seconds", "ratio to hf --help"], rows))


if __name__ == "__main__":
    main()
