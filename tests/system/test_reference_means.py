"""Reference means are measured once per model and kept on disk: a second process reads them instead of
running the model over every reference text, and gets the same values; another model (other weights)
measures its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from examples.make_adapter import tiny_llama
from tests.api.test_client_hub import tokenizer
from quiver_hub import reference_means

model = tiny_llama(seed=int(sys.argv[2]))
calls = []
model.register_forward_hook(lambda *a: calls.append(1))
means = reference_means(model, tokenizer(), ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"])
print(json.dumps({"forwards": len(calls), "means": {m: t.tolist() for m, t in means.items()}}))
"""


def run(cache: Path, seed: int) -> dict:
    env = {**os.environ, "QUIVER_CACHE": str(cache)}
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, root, str(seed)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_the_reference_means_from_disk(tmp_path: Path) -> None:
    first = run(tmp_path / "cache", seed=0)
    assert first["forwards"] > 1  # one forward pass a reference text
    assert len(list((tmp_path / "cache" / "reference").glob("*.safetensors"))) == 1
    second = run(tmp_path / "cache", seed=0)
    assert second["forwards"] == 0 and second["means"] == first["means"]
    other = run(tmp_path / "cache", seed=1)  # other weights: measured, and kept beside
    assert other["forwards"] > 1 and other["means"] != first["means"]
    assert len(list((tmp_path / "cache" / "reference").glob("*.safetensors"))) == 2
