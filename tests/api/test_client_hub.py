"""client.Hub against a live hub: push, pull and its cache, errors, search and routing, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.numpy import load
from tokenizers import Tokenizer, models, pre_tokenizers

from examples.make_adapter import BASE_MODEL, tiny_llama
from quiver_hub import Hub, InvalidAdapter, NotFound, Unauthorized, merge, unmerge
from quiver_hub.local.capture import capture_inputs
from quiver_hub.results import AdapterInfo, Hit, VersionInfo
from quiver_hub.routing import routing_payload
from tests.support.adapters import write_adapter
from tests.support.servers import LiveServer


def peft_model(seed: int, targets: tuple[str, ...] = ("q_proj", "v_proj")) -> peft.PeftModel:
    base = tiny_llama()
    torch.manual_seed(seed)
    model = peft.get_peft_model(
        base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False)
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


def tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A real fast tokenizer built in code (nothing to download): whitespace words over a small vocab."""
    words = (
        "[UNK] [PAD] the a of to and is in it you that write code python function translate french english "
        "sum numbers add two plus what".split()
    )
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def test_push_pull_and_the_cache(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    folder = write_adapter(tmp_path / "a", extra_files={"README.md": b"# card\n"})
    with Hub(server.url, token, cache_dir=tmp_path / "cache") as client:
        v1 = client.push(folder, "alice/cached", description="d", tags=["x", "y"], task="t")
        assert (v1["id"], v1["version"]) == ("alice/cached", 1)
        pulled = client.pull("alice/cached")
        for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
            assert (pulled / name).read_bytes() == (folder / name).read_bytes()
        assert client.pull(f"alice/cached@{v1['revision']}") == pulled == client.pull("alice/cached@1")
        assert client.info("alice/cached")["tags"] == ["x", "y"]
        assert [a["id"] for a in client.list(tag="x")] == ["alice/cached"]
        # typed answers that are still the JSON dicts (quiver_hub.results)
        info = client.info("alice/cached")
        assert isinstance(info, AdapterInfo) and info.latest.revision == v1.revision == info["latest"]["revision"]
        assert isinstance(client.info(f"alice/cached@{v1.revision}"), VersionInfo) and v1.files[0].sha256
        assert isinstance(client.list()[0], AdapterInfo)
        hits = client.search("d")
        assert hits and isinstance(hits[0], Hit) and hits[0].id == hits[0]["id"] == "alice/cached"
    # A pinned revision in the cache, or an unpinned name pulled before, needs no hub when the hub cannot
    # be reached (or QUIVER_OFFLINE=1).
    with Hub("http://127.0.0.1:9", cache_dir=tmp_path / "cache") as unreachable:
        with pytest.warns(RuntimeWarning, match="from the cache"):
            assert unreachable.pull(f"alice/cached@{v1['revision']}") == pulled
        with pytest.warns(RuntimeWarning, match="from the cache"):
            assert unreachable.pull("alice/cached@1") == pulled
        with pytest.warns(RuntimeWarning, match="from the cache"):  # the last answer, as huggingface_hub
            assert unreachable.pull("alice/cached") == pulled  # resolves main when the Hub cannot be reached
        with pytest.raises(Exception, match="cannot reach the hub"):
            unreachable.pull("alice/never-pulled")
    # When the hub answers, it decides: a version deleted there is gone, warm cache or not, and its
    # number is never given to other weights.
    with Hub(server.url, token, cache_dir=tmp_path / "cache") as client:
        client.delete("alice/cached")
        with pytest.raises(NotFound):
            client.pull("alice/cached@1")
        with pytest.raises(NotFound):
            client.pull(f"alice/cached@{v1['revision']}")
        again = client.push(write_adapter(tmp_path / "b", seed=9), "alice/cached")
        assert again["version"] == 2 and again["revision"] != v1["revision"]
        assert client.pull("alice/cached@2") != pulled


def test_interrupted_and_corrupted_downloads(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    folder = write_adapter(tmp_path / "a", hidden=64)
    data = (folder / "adapter_model.safetensors").read_bytes()
    with Hub(server.url, token, cache_dir=tmp_path / "cache") as client:
        v = client.push(folder, "alice/resume")
        sha = next(f["sha256"] for f in v["files"] if f["path"] == "adapter_model.safetensors")
        partial = client.cache.blobs / f"{sha}.incomplete"
        partial.write_bytes(data[: len(data) // 3])  # a download cut short
        pulled = client.pull("alice/resume@1")
        assert (pulled / "adapter_model.safetensors").read_bytes() == data and not partial.exists()

    with Hub(server.url, token, cache_dir=tmp_path / "cache2") as client:
        partial = client.cache.blobs / f"{sha}.incomplete"
        partial.write_bytes(b"\x00" * 100)  # garbage from an earlier, broken download: fetched again whole
        assert (client.pull("alice/resume@1") / "adapter_model.safetensors").read_bytes() == data
        assert not partial.exists()


def test_several_processes_pull_at_once(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    with Hub(server.url, token) as client:
        client.push(write_adapter(tmp_path / "a", hidden=64), "alice/shared")
    code = "import sys; from quiver_hub import Hub; print(Hub(sys.argv[1], cache_dir=sys.argv[2]).pull('alice/shared'))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, server.url, str(tmp_path / "cache")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ},
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    folders = {o.strip() for o, _ in outs}
    assert len(folders) == 1
    assert sorted(p.name for p in Path(folders.pop()).iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not list((tmp_path / "cache" / "blobs").glob("*.incomplete"))


def test_errors_are_exceptions(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    with (
        Hub(server.url, token, cache_dir=tmp_path / "c") as client,
        Hub(server.url, "", cache_dir=tmp_path / "c") as anon,
    ):
        with pytest.raises(NotFound, match="adapter alice/nothing not found"):
            client.pull("alice/nothing")
        with pytest.raises(Unauthorized):
            anon.push(write_adapter(tmp_path / "a"), "alice/x")
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "adapter_config.json").write_text("{}")
        with pytest.raises(InvalidAdapter, match="adapter_model.safetensors is missing") as e:
            client.push(bad, "alice/x")
        assert e.value.status == 422 and e.value.code == "invalid_adapter"
        with pytest.raises(ValueError, match="namespace/name"):
            client.pull("no-namespace")


def test_end_to_end_push_route_pull_merge_generate(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    tok = tokenizer()
    model = tiny_llama()
    with Hub(server.url, token, cache_dir=tmp_path / "cache") as client:
        for i, task in enumerate(["code", "translation", "math"]):
            client.push(
                peft_model(seed=i),
                f"alice/{task}",
                task=task,
                description=f"{task} adapter",
                examples=[f"an example of {task}"],
            )
        assert client.search("programming", limit=1)[0]["id"] == "alice/code"
        assert client.route_text("an example of math", limit=1)[0]["id"] == "alice/math"

        results = client.route(
            model=model, tokenizer=tok, text="write a python function to add two numbers", top_k=2, limit=2
        )
        assert len(results) == 2 and results[0]["score"] >= results[1]["score"] > 0
        assert {r["id"] for r in results} <= {"alice/code", "alice/translation", "alice/math"}
        folders = [client.pull(f"{r['id']}@{r['revision']}") for r in results]

    ids = tok("write a python function", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base_logits = model(ids).logits
        base_generation = model.generate(ids, max_new_tokens=5, do_sample=False)
    merge(model, folders, weights=[r["score"] for r in results])
    with torch.no_grad():
        merged_logits = model(ids).logits
        model.generate(ids, max_new_tokens=5, do_sample=False)
    assert not torch.allclose(merged_logits, base_logits)
    unmerge(model)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base_logits)
        assert torch.equal(model.generate(ids, max_new_tokens=5, do_sample=False), base_generation)
    assert BASE_MODEL == model.name_or_path


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_routing_inputs_are_captured_on_the_models_device_and_sent_as_fp32(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    tok = tokenizer()
    texts = ["write a python function", "add two numbers"]  # two lengths: padded
    modules = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "lm_head"]
    expected = capture_inputs(tiny_llama(), tok, texts, modules)
    got = capture_inputs(tiny_llama().to(device), tok, texts, modules)
    assert set(got) == set(modules)
    tokens = int(tok(texts, return_tensors="pt", padding=True)["attention_mask"].sum())  # the padding is left out
    assert got["model.layers.1.mlp.down_proj"].shape == (tokens, 64)
    for module in modules:
        assert got[module].device.type == device
        torch.testing.assert_close(got[module].cpu(), expected[module], rtol=0, atol=1e-5)
    sent = load(routing_payload({m: h.to(torch.bfloat16).reshape(1, -1, h.shape[-1]) for m, h in got.items()}))
    for module in modules:
        assert sent[module].dtype == np.float32 and sent[module].shape == tuple(got[module].shape)
        assert np.array_equal(sent[module], got[module].to(torch.bfloat16).float().cpu().numpy())
    with pytest.raises(ValueError, match="none of the modules"):
        capture_inputs(tiny_llama(), tok, texts, ["transformer.h.0.attn.c_attn"])
