"""The PEFT-variants zoo: LoRA adapters in the forms PEFT writes, each made with get_peft_model(...) +
save_pretrained on tiny Llama, GPT-2, T5 and sequence-classification models (PEFT is the truth for the
format: PeftModel.from_pretrained(...).merge_and_unload()). Each is merged exactly as PEFT merges it
(and unmerged bitwise), or refused with a message that names what is refused, by the client and by the
hub alike. Never silently wrong (registry/lora/peft_format.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from examples.make_adapter import tiny_llama
from quiver_hub import Adapter, apply_arrow, merge, remove_arrow, unmerge
from tests.support.adapters import upload_parts
from tests.support.servers import LiveServer
from tests.unit.test_client_merge import snapshot, tiny_gpt2

QV = ["q_proj", "v_proj"]


def tiny_t5() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    model.name_or_path = model.config.name_or_path = "quiver-test/tiny-t5"
    return model


def tiny_llama_classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    config = tiny_llama().config
    config.num_labels, config.pad_token_id = 3, 0
    model = transformers.LlamaForSequenceClassification(config).eval()
    model.name_or_path = model.config.name_or_path = "quiver-test/tiny-llama-cls"
    return model


def edited(config_change: dict | None = None, tensors: dict | None = None) -> Callable[[Path], None]:
    """A change to a saved plain adapter: settings added to its config, tensors added to its weights."""

    def edit(folder: Path) -> None:
        if config_change:
            path = folder / "adapter_config.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), **config_change}))
        if tensors:
            weights = folder / "adapter_model.safetensors"
            save_file({**load_file(str(weights)), **tensors}, str(weights))

    return edit


def without(suffix: str) -> Callable[[Path], None]:
    """A change to a saved adapter: the tensors whose keys end with `suffix` taken out."""

    def edit(folder: Path) -> None:
        weights = folder / "adapter_model.safetensors"
        save_file({k: v for k, v in load_file(str(weights)).items() if not k.endswith(suffix)}, str(weights))

    return edit


# name -> (model, LoraConfig fields, save_pretrained options, edit of the saved folder)
MERGED = {
    "plain": (tiny_llama, dict(target_modules=QV), {}, None),
    "rslora": (tiny_llama, dict(target_modules=QV, use_rslora=True), {}, None),
    "rank and alpha patterns": (
        tiny_llama,
        dict(target_modules=["q_proj", "down_proj"], rank_pattern={"down_proj": 2}, alpha_pattern={"q_proj": 32}),
        {},
        None,
    ),
    "all-linear": (tiny_llama, dict(target_modules="all-linear"), {}, None),
    "layers_to_transform": (tiny_llama, dict(target_modules=QV, layers_to_transform=[1]), {}, None),
    "regex target_modules": (tiny_llama, dict(target_modules=r".*\.(q|k)_proj"), {}, None),
    "exclude_modules": (tiny_llama, dict(target_modules="all-linear", exclude_modules=["down_proj"]), {}, None),
    "gpt2 fan_in_fan_out": (tiny_gpt2, dict(target_modules=["c_attn", "c_proj"], fan_in_fan_out=True), {}, None),
    "t5": (tiny_t5, dict(target_modules=["q", "v"]), {}, None),
    "rank above the width": (tiny_llama, dict(r=64, lora_alpha=16, target_modules=QV), {}, None),
    "training-only settings": (
        tiny_llama,
        dict(target_modules=QV, lora_dropout=0.1, init_lora_weights="gaussian"),
        {},
        None,
    ),
    "llama bias=all (it has no biases)": (tiny_llama, dict(target_modules=QV, bias="all"), {}, None),
    "unknown setting at its default": (tiny_llama, dict(target_modules=QV), {}, edited({"a_future_flag": None})),
    "dora": (tiny_llama, dict(target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True), {}, None),
    "dora + rslora + patterns": (
        tiny_llama,
        dict(target_modules=QV, use_dora=True, use_rslora=True, rank_pattern={"v_proj": 2}),
        {},
        None,
    ),
    "gpt2 dora": (tiny_gpt2, dict(target_modules=["c_attn"], fan_in_fan_out=True, use_dora=True), {}, None),
    "modules_to_save lm_head": (tiny_llama, dict(target_modules=QV, modules_to_save=["lm_head"]), {}, None),
    "gpt2 modules_to_save lm_head (tied to wte: PEFT unties it)": (
        tiny_gpt2,
        dict(target_modules=["c_attn"], fan_in_fan_out=True, modules_to_save=["lm_head"]),
        {},
        None,
    ),
    "sequence classification head": (tiny_llama_classifier, dict(target_modules=QV, task_type="SEQ_CLS"), {}, None),
    "lora on embed_tokens": (tiny_llama, dict(target_modules=["embed_tokens", "q_proj"]), {}, None),
    "gpt2 lora on wte (tied)": (tiny_gpt2, dict(target_modules=["c_attn", "wte"], fan_in_fan_out=True), {}, None),
    "lora on lm_head": (tiny_llama, dict(target_modules=["q_proj", "lm_head"]), {}, None),
    "save_embedding_layers": (tiny_llama, dict(target_modules=QV), {"save_embedding_layers": True}, None),
    "trainable_token_indices": (tiny_llama, dict(target_modules=QV, trainable_token_indices=[1, 2]), {}, None),
    "trainable_token_indices by module": (
        tiny_llama,
        dict(target_modules=QV, trainable_token_indices={"embed_tokens": [4, 9]}),
        {},
        None,
    ),
    "gpt2 trainable tokens (tied)": (
        tiny_gpt2,
        dict(target_modules=["c_attn"], fan_in_fan_out=True, trainable_token_indices=[3, 7]),
        {},
        None,
    ),
    "gpt2 bias=all": (tiny_gpt2, dict(target_modules=["c_attn"], fan_in_fan_out=True, bias="all"), {}, None),
    "gpt2 bias=lora_only": (
        tiny_gpt2,
        dict(target_modules=["c_attn"], fan_in_fan_out=True, bias="lora_only"),
        {},
        None,
    ),
    "gpt2 lora_bias": (tiny_gpt2, dict(target_modules=["c_attn"], fan_in_fan_out=True, lora_bias=True), {}, None),
}
REFUSED = {
    "target_parameters": (tiny_llama, dict(target_modules=QV), {}, edited({"target_parameters": ["w"]}), "parameters"),
    "layer_replication": (
        tiny_llama,
        dict(target_modules=QV),
        {},
        edited({"layer_replication": [[0, 2], [1, 2]]}),
        "layer_replication",
    ),
    "unknown setting that is set": (
        tiny_llama,
        dict(target_modules=QV),
        {},
        edited({"a_future_flag": True}),
        "a_future_flag",
    ),
    "magnitudes without use_dora": (
        tiny_llama,
        dict(target_modules=QV),
        {},
        edited(tensors={"base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": torch.ones(32)}),
        "DoRA magnitude vectors",
    ),
    "planted unknown tensor": (
        tiny_llama,
        dict(target_modules=QV),
        {},
        edited(tensors={"base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight": torch.ones(2, 2)}),
        "lora_C",
    ),
    "a saved tensor no setting explains": (
        tiny_llama,
        dict(target_modules=QV),
        {},
        edited(tensors={"base_model.model.model.norm.weight": torch.ones(32)}),
        "no setting explains",
    ),
    "lora_B.bias without lora_bias": (
        tiny_llama,
        dict(target_modules=QV),
        {},
        edited(tensors={"base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias": torch.ones(32)}),
        "lora_B.bias",
    ),
    "lora_A without its lora_B": (
        tiny_llama,
        dict(target_modules=QV),
        {},
        without("q_proj.lora_B.weight"),
        "lora_B missing",
    ),
    "token deltas for rows the config does not name": (
        tiny_llama,
        dict(target_modules=QV, trainable_token_indices=[1, 2]),
        {},
        edited({"trainable_token_indices": None}),
        "trainable_token_indices does not place",
    ),
}
UNMERGEABLE = {  # PEFT itself refuses to merge these: the hub stores them, the client refuses with PEFT's reason
    "activated lora": (
        tiny_llama,
        dict(target_modules=QV, alora_invocation_tokens=[5, 6]),
        {},
        None,
        "alora_invocation_tokens",
    ),
    "lora_bias on a layer without a bias": (
        tiny_llama,
        dict(target_modules=QV, lora_bias=True),
        {},
        None,
        "because the base layer has no bias",
    ),
}


def make(tmp_path: Path, name: str, build: Callable, fields: dict, save: dict, edit: Callable | None) -> Path:
    folder = tmp_path / name.replace(" ", "-")
    config = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "init_lora_weights": False, **fields})
    model = peft.get_peft_model(build(), config)
    with torch.no_grad():  # every trained tensor away from its initial value, as after training
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(folder, **save)
    if edit is not None:
        edit(folder)
    return folder


@pytest.mark.parametrize("name", list(MERGED))
def test_merged_exactly_as_peft_merges_and_unmerged_bitwise(tmp_path: Path, name: str) -> None:
    build, fields, save, edit = MERGED[name]
    folder = make(tmp_path, name, build, fields, save, edit)
    expected = peft.PeftModel.from_pretrained(build(), folder).merge_and_unload().state_dict()
    model = build()
    before = snapshot(model)
    merge(model, folder)
    got = model.state_dict()
    assert any(not torch.equal(got[k], before[k]) for k in got), "the adapter must change something"
    assert set(got) == set(expected)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-5, msg=f"{name}: {k}")
    unmerge(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_a_weighted_merge_of_two_is_the_weighted_sum_of_peft_deltas(tmp_path: Path) -> None:
    folders = [make(tmp_path, n, *MERGED[n]) for n in ("plain", "rslora")]
    base = tiny_llama().state_dict()
    deltas = []
    for folder in folders:
        merged = peft.PeftModel.from_pretrained(tiny_llama(), folder).merge_and_unload().state_dict()
        deltas.append({k: merged[k].double() - base[k].double() for k in base})
    weights = [0.7, -1.3]
    model = tiny_llama()
    merge(model, folders, weights)
    for k, v in model.state_dict().items():
        expected = base[k].double() + sum(w * d[k] for w, d in zip(weights, deltas, strict=True))
        torch.testing.assert_close(v.double(), expected, rtol=0, atol=1e-5, msg=k)


@pytest.mark.parametrize("name", ["plain", "gpt2 fan_in_fan_out", "t5"])
def test_arrow_with_one_expert_is_peft_unmerged_forward(tmp_path: Path, name: str) -> None:
    build, fields, save, edit = MERGED[name]
    folder = make(tmp_path, name, build, fields, save, edit)
    ids = torch.randint(1, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    kwargs = {"decoder_input_ids": ids} if name == "t5" else {}
    with torch.no_grad():
        expected = peft.PeftModel.from_pretrained(build(), folder).eval()(ids, **kwargs).logits
        model = build()
        apply_arrow(model, [folder], top_k=1)
        got = model(ids, **kwargs).logits
        remove_arrow(model)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(REFUSED) + list(UNMERGEABLE))
def test_the_client_refuses_what_it_cannot_apply_and_names_it(tmp_path: Path, name: str) -> None:
    build, fields, save, edit, named = {**REFUSED, **UNMERGEABLE}[name]
    folder = make(tmp_path, name, build, fields, save, edit)
    if name in UNMERGEABLE:  # PEFT refuses to merge it too
        with pytest.raises((ValueError, NotImplementedError, RuntimeError)):
            peft.PeftModel.from_pretrained(build(), folder).merge_and_unload()
    else:
        with pytest.raises(ValueError, match="refuses it") as refused:
            Adapter.load(folder)
        assert named in str(refused.value), str(refused.value)
    model = build()
    before = snapshot(model)
    with pytest.raises(ValueError, match=named):
        merge(model, folder)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # nothing was applied


def test_an_unknown_peft_type_is_refused_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "ia3"
    peft.get_peft_model(tiny_llama(), peft.IA3Config(target_modules=["k_proj", "down_proj"])).save_pretrained(folder)
    with pytest.raises(ValueError, match="peft_type is 'IA3'"):
        Adapter.load(folder)


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_the_hub_stores_what_merges_and_refuses_the_rest_by_name(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    with server.client(token) as c:
        for i, name in enumerate(MERGED):
            folder = make(tmp_path, name, *MERGED[name])
            r = c.post(f"/v1/adapters/alice/ok{i}", files=upload_parts(folder))
            assert r.status_code == 201, (name, r.text)
            for f in r.json()["files"]:
                got = c.get(f"/v1/adapters/alice/ok{i}/versions/latest/files/{f['path']}").content
                assert got == (folder / f["path"]).read_bytes(), (name, f["path"])
        for i, name in enumerate(REFUSED):
            build, fields, save, edit, named = REFUSED[name]
            r = c.post(f"/v1/adapters/alice/no{i}", files=upload_parts(make(tmp_path, name, build, fields, save, edit)))
            assert r.status_code == 422 and named in r.json()["error"]["message"], (name, r.text)
            assert c.get(f"/v1/adapters/alice/no{i}").status_code == 404  # nothing stored
        for i, (name, (build, fields, save, edit, _)) in enumerate(UNMERGEABLE.items()):  # stored for download
            folder = make(tmp_path, name, build, fields, save, edit)
            assert c.post(f"/v1/adapters/alice/peft-refuses{i}", files=upload_parts(folder)).status_code == 201, name
        ia3 = tmp_path / "ia3"
        peft.get_peft_model(tiny_llama(), peft.IA3Config(target_modules=["k_proj"])).save_pretrained(ia3)
        r = c.post("/v1/adapters/alice/ia3", files=upload_parts(ia3))
        assert r.status_code == 422 and "peft_type is 'IA3'" in r.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_quiver_push_converts_a_pickled_adapter_without_running_it(server: LiveServer, tmp_path: Path) -> None:
    import os
    import pickle
    import subprocess
    import sys

    folder = tmp_path / "pickled"
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, target_modules=QV, init_lora_weights=False))
    model.save_pretrained(folder, safe_serialization=False)
    assert (folder / "adapter_model.bin").is_file() and not (folder / "adapter_model.safetensors").exists()
    token = server.token("alice")
    env = {**os.environ, "QUIVER_ENDPOINT": server.url, "QUIVER_TOKEN": token}

    def push(source: Path, repo: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "quiver_hub", "push", str(source), repo]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    pushed = push(folder, "alice/pickled")
    assert pushed.returncode == 0, pushed.stderr
    assert "converted adapter_model.bin to adapter_model.safetensors" in pushed.stderr
    with server.client(token) as c:
        files = {f["path"] for f in c.get("/v1/adapters/alice/pickled/versions/latest").json()["files"]}
        assert "adapter_model.bin" not in files and "adapter_model.safetensors" in files
        got = c.get("/v1/adapters/alice/pickled/versions/latest/files/adapter_model.safetensors").content
    from safetensors.torch import load

    expected = torch.load(folder / "adapter_model.bin", weights_only=True)
    assert {k: v.tolist() for k, v in load(got).items()} == {k: v.tolist() for k, v in expected.items()}

    class Payload:  # what a malicious .bin holds: loading it would run code
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "adapter_config.json").write_text((folder / "adapter_config.json").read_text())
    (evil / "adapter_model.bin").write_bytes(pickle.dumps({"x": Payload()}))
    refused = push(evil, "alice/evil")
    assert refused.returncode == 2 and "cannot be read as plain tensors" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "ran").exists()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_adapter_of_a_multi_adapter_folder_is_checked(server: LiveServer, tmp_path: Path) -> None:
    def folder_with(second: dict, name: str) -> Path:
        model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, target_modules=QV, init_lora_weights=False))
        model.add_adapter("second", peft.LoraConfig(r=2, target_modules=["k_proj"]))
        model.save_pretrained(tmp_path / name)
        edited(second)(tmp_path / name / "second")
        return tmp_path / name

    with server.client(server.token("alice")) as c:
        ok = c.post("/v1/adapters/alice/two", files=upload_parts(folder_with({}, "ok")))
        assert ok.status_code == 201, ok.text
        assert {"second/adapter_config.json", "second/adapter_model.safetensors"} <= {
            f["path"] for f in ok.json()["files"]
        }
        bad = c.post(
            "/v1/adapters/alice/two-bad", files=upload_parts(folder_with({"layer_replication": [[0, 1]]}, "bad"))
        )
        assert bad.status_code == 422 and "the adapter in second/" in bad.text and "layer_replication" in bad.text


def test_a_dora_adapter_is_merged_alone_and_refused_where_its_magnitudes_cannot_go(tmp_path: Path) -> None:
    dora = make(tmp_path, "dora", *MERGED["dora"])
    plain = make(tmp_path, "plain", *MERGED["plain"])
    model = tiny_llama()
    before = snapshot(model)
    for adapters, weights in (([dora, plain], None), ([dora], [0.5])):
        with pytest.raises(ValueError, match="DoRA magnitudes"):
            merge(model, adapters, weights)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(ValueError, match="DoRA magnitudes.*Arrow"):
        apply_arrow(model, [dora, plain])


def peft_delta(build: Callable, folder: Path) -> dict[str, torch.Tensor]:
    """PEFT's merge_and_unload minus the base model, per state-dict key (float64)."""
    base = build().state_dict()
    merged = peft.PeftModel.from_pretrained(build(), folder).merge_and_unload().state_dict()
    return {k: merged[k].double() - base[k].double() for k in base}


@pytest.mark.parametrize(
    "names, weights",
    [
        (["modules_to_save lm_head", "lora on embed_tokens", "plain"], [1.0, 0.6, -1.3]),
        (["trainable_token_indices", "trainable_token_indices by module", "rslora"], [1.0, 1.0, 0.4]),
        (["gpt2 bias=all", "gpt2 lora_bias", "gpt2 lora on wte (tied)"], [1.0, 0.5, 2.0]),
    ],
)
def test_weighted_merges_of_every_part_are_the_weighted_sums_of_peft_deltas(
    tmp_path: Path, names: list[str], weights: list[float]
) -> None:
    """LoRA on embeddings and lora_B biases take any weight; saved modules and token rows, weight 1."""
    build = MERGED[names[0]][0]
    folders = [make(tmp_path, n, *MERGED[n]) for n in names]
    deltas = [peft_delta(build, f) for f in folders]
    model = build()
    before = snapshot(model)
    merge(model, folders, weights)
    for k, v in model.state_dict().items():
        expected = before[k].double() + sum(w * d[k] for w, d in zip(weights, deltas, strict=True))
        torch.testing.assert_close(v.double(), expected, rtol=0, atol=1e-5, msg=k)
    unmerge(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_what_replaces_parameters_is_merged_once_with_weight_one_and_never_mixed(tmp_path: Path) -> None:
    saved = make(tmp_path, "saved", *MERGED["modules_to_save lm_head"])
    saved_too = make(
        tmp_path, "saved-too", tiny_llama, dict(target_modules=["k_proj"], modules_to_save=["lm_head"]), {}, None
    )
    tokens = make(tmp_path, "tokens", *MERGED["trainable_token_indices"])
    tokens_too = make(
        tmp_path, "tokens-too", tiny_llama, dict(target_modules=QV, trainable_token_indices=[2, 5]), {}, None
    )
    plain = make(tmp_path, "plain", *MERGED["plain"])
    model = tiny_llama()
    before = snapshot(model)
    for adapters, weights, message in (
        ([saved, plain], [0.5, 1.0], "lm_head.weight.*weight 0.5 is not defined"),
        ([saved, saved_too], None, "both replace lm_head.weight"),
        ([tokens, tokens_too], None, "both replace model.embed_tokens.weight row 2"),
    ):
        with pytest.raises(ValueError, match=message):
            merge(model, adapters, weights)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    for folder, what in ((saved, "saved parameters"), (tokens, "trainable tokens")):
        with pytest.raises(ValueError, match=f"{what}.*Arrow"):
            apply_arrow(model, [folder, plain])
    gpt2 = tiny_gpt2()
    merge(gpt2, make(tmp_path, "gpt2-head", *MERGED["gpt2 modules_to_save lm_head (tied to wte: PEFT unties it)"]))
    assert gpt2.lm_head.weight is not gpt2.transformer.wte.weight
    unmerge(gpt2)
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight  # tied again, as it was
