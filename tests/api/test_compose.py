"""Few-shot composition on a small real model: the composed delta is exactly the weighted dense sum, the
fit lowers the examples' loss, the published composition loads in PEFT with the client merge's logits,
and its weights and lineage round-trip through the hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from quiver_hub import Adapter, Hub, compose, merged
from quiver_hub.registry.lora import algebra
from tests.support.servers import LiveServer

BASE = "quiver-test/tiny-llama"


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    model.name_or_path = BASE
    return model


def tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = "the a cat dog sat ran on mat fast slow red blue one two three four".split()
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def adapters(tmp_path: Path, n: int = 3) -> list[Path]:
    from peft import LoraConfig, get_peft_model

    folders = []
    for i in range(n):
        torch.manual_seed(10 + i)
        model = get_peft_model(
            tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
        )
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
        model.save_pretrained(tmp_path / f"a{i}")
        folders.append(tmp_path / f"a{i}")
    return folders


EXAMPLES = [("the cat sat on the", "mat"), ("the dog ran", "fast"), ("one two three", "four")]


def test_the_composed_delta_is_the_weighted_dense_sum(tmp_path: Path) -> None:
    members = [Adapter.load(f) for f in adapters(tmp_path)]
    result = compose(tiny_llama(), tokenizer(), members, EXAMPLES, steps=30, chat=False)
    assert len(result.weights) == 3 and result.losses[-1] < result.losses[0]  # the fit helped
    factors = result.factors()
    for module, f in factors.items():
        dense = sum(
            w * m.factors[module].scaling * (m.factors[module].B.double() @ m.factors[module].A.double())
            for m, w in zip(members, result.weights, strict=True)
        )
        assert torch.allclose(f.scaling * f.B @ f.A, dense, atol=1e-10)
    compressed = result.factors(rank=2)
    for module, f in compressed.items():
        exact = factors[module].B @ factors[module].A
        best = torch.linalg.svd(exact)
        rank2 = best.U[:, :2] @ torch.diag(best.S[:2]) @ best.Vh[:2]
        assert torch.allclose(f.B @ f.A, rank2, atol=1e-8)


def test_lorahubs_recipe_combines_a_and_b_apart(tmp_path: Path) -> None:
    pytest.importorskip("nevergrad")
    members = [Adapter.load(f) for f in adapters(tmp_path, 2)]
    result = compose(tiny_llama(), tokenizer(), members, EXAMPLES, method="lorahub", chat=False)
    assert result.combine == "factors" and len(result.losses) == 40
    module = next(iter(members[0].factors))
    f, (w0, w1) = result.factors()[module], result.weights
    a, b = members[0].factors[module], members[1].factors[module]
    cross = (w0 * a.scaling * a.B.double() + w1 * b.scaling * b.B.double()) @ (w0 * a.A.double() + w1 * b.A.double())
    assert torch.allclose(f.B @ f.A, cross, atol=1e-10)  # with its cross terms B_i A_j


def test_a_published_composition_loads_in_peft_and_round_trips(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    model, tok = tiny_llama(), tokenizer()
    with Hub(server.url, token, cache_dir=tmp_path / "cache") as hub:
        for i, folder in enumerate(adapters(tmp_path)):
            hub.push(folder, f"alice/skill{i}", base_model=BASE)
        pulled = [Adapter.load(hub.pull(f"alice/skill{i}")) for i in range(3)]
        result = compose(model, tok, pulled, EXAMPLES, steps=20, chat=False)
        published = hub.publish_composition(result, "alice/composed", base_model=BASE)
        lineage = published["derived_from"]
        assert lineage["method"] == "composition:gradient"
        assert [(v["id"], v["version"]) for v in lineage["versions"]] == [(f"alice/skill{i}", 1) for i in range(3)]
        assert [v["weight"] for v in lineage["versions"]] == pytest.approx(result.weights)
        folder = hub.pull("alice/composed")
    ids = tok("the cat sat on the", return_tensors="pt")["input_ids"]
    with torch.no_grad(), merged(model, pulled, result.weights):
        expected = model(ids).logits
    peft = PeftModel.from_pretrained(tiny_llama(), str(folder)).eval()
    with torch.no_grad():
        got = peft(ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    config = json.loads((folder / algebra.CONFIG_FILE).read_text())
    assert config["r"] == 12 and config["base_model_name_or_path"] == BASE  # the ranks concatenated
    with server.client(token) as c:  # a lineage naming what the publisher cannot see is refused
        bad = {"method": "composition:gradient", "versions": [{"id": "bob/hidden", "revision": "0" * 40}]}
        files = [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]
        r = c.post("/v1/adapters/alice/forged", files=files, data={"derived_from": json.dumps(bad)})
        assert r.status_code == 404
