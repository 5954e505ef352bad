"""client.merge / unmerge / merged against PEFT and against dense algebra, on real transformers models."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import peft
import pytest
import torch
import transformers

from examples.make_adapter import tiny_llama
from quiver_hub import Adapter, merge, merged, unmerge
from quiver_hub.local import fused
from quiver_hub.registry.lora import algebra


@pytest.fixture(autouse=True, params=["fused kernel", "torch alone", "cuda"])
def device(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> torch.device:
    """Every test here runs each way a merge is computed: on the CPU by the one-pass kernel and by torch
    alone (as where no C compiler is to be had), and on a GPU (addmm) where there is one."""
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU")
        return torch.device("cuda")
    if request.param == "torch alone":
        monkeypatch.setenv("QUIVER_FUSED_KERNEL", "0")
    else:
        assert fused.supports(torch.float32), "the fused merge kernel must build on this machine"
    return torch.device("cpu")


def save_lora(model: torch.nn.Module, folder: Path, seed: int, **config) -> Path:
    torch.manual_seed(seed)
    lora = peft.LoraConfig(init_lora_weights=False, **config)
    peft_model = peft.get_peft_model(model, lora)
    with torch.no_grad():  # PEFT's random init gives B a tiny scale: make the deltas matter
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    return folder


def tiny_gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.name_or_path = model.config.name_or_path = "quiver-test/tiny-gpt2"
    return model


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bitwise(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


CASES = {
    "plain": (tiny_llama, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])),
    "rslora + patterns": (
        tiny_llama,
        dict(
            r=8,
            lora_alpha=4,
            use_rslora=True,
            target_modules=["q_proj", "up_proj"],
            rank_pattern={"up_proj": 2},
            alpha_pattern={"q_proj": 32},
        ),
    ),
    "gpt2 fan_in_fan_out": (
        tiny_gpt2,
        dict(r=4, lora_alpha=16, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_merge_equals_peft_merge_and_unload(tmp_path: Path, case: str, device: torch.device) -> None:
    build, config = CASES[case]
    folder = save_lora(build(), tmp_path / "a", seed=1, **config)
    expected = peft.PeftModel.from_pretrained(build().to(device), folder).merge_and_unload().state_dict()
    model = build().to(device)
    merge(model, folder)
    got = model.state_dict()
    changed = [k for k in expected if not torch.equal(expected[k].cpu(), build().state_dict()[k])]
    assert changed, "the adapter must change some weights"
    for k in expected:
        assert got[k].device.type == device.type
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-5)


def test_weighted_merge_is_the_exact_weighted_sum_of_deltas(tmp_path: Path, device: torch.device) -> None:
    adapters = [
        Adapter.load(save_lora(tiny_llama(), tmp_path / f"a{i}", seed=i, r=r, lora_alpha=a, target_modules=targets))
        for i, (r, a, targets) in enumerate(
            [(4, 8, ["q_proj", "v_proj"]), (2, 2, ["q_proj"]), (8, 4, ["v_proj", "o_proj"])]
        )
    ]
    weights = [0.5, -1.5, 2.0]
    model, base = tiny_llama().to(device), tiny_llama().state_dict()
    merge(model, [adapters[0], adapters[1].to(device), adapters[2]], weights)  # factors on the CPU or the device
    expected = {k: v.double() for k, v in base.items()}
    for adapter, w in zip(adapters, weights, strict=True):
        for module, f in adapter.factors.items():
            expected[f"{module}.weight"] += w * f.scaling * f.B.double() @ f.A.double()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v.double().cpu(), expected[k], rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_unmerge_restores_every_weight_bitwise(tmp_path: Path, dtype: torch.dtype, device: torch.device) -> None:
    folders = [
        save_lora(
            tiny_llama(),
            tmp_path / f"a{i}",
            seed=i,
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "gate_proj"],
        )
        for i in range(3)
    ]
    adapters = [Adapter.load(f) for f in folders]
    model = tiny_llama().to(device, dtype)
    before = snapshot(model)
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        base_logits = model(ids).logits
    for cycle in range(100):
        merge(model, adapters, [1.0, 0.5, -0.25])
        if cycle == 0:
            changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
            assert len(changed) == 2 * 3  # q, v and gate of both layers
        unmerge(model)
    assert_bitwise(model, before)
    with merged(model, adapters[0]):
        pass
    assert_bitwise(model, before)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base_logits)


def test_offload_merges_the_same_in_place_and_a_failure_puts_back_what_changed(
    tmp_path: Path, device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """merge(..., offload=True) on a GPU: the same weights as the default merge, the originals in host
    memory (no GPU memory left allocated beyond the model's own), restored bitwise; a failure after
    some modules were merged in place puts those back."""
    if device.type != "cuda":
        pytest.skip("offload concerns models on a GPU")
    folders = [
        save_lora(tiny_llama(), tmp_path / f"a{i}", seed=i, r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"])
        for i in range(2)
    ]
    adapters = [Adapter.load(f) for f in folders]
    model = tiny_llama().to(device, torch.bfloat16)
    before = snapshot(model)
    merge(model, adapters, [1.0, -0.5])
    expected = snapshot(model)
    unmerge(model, free=True)
    torch.cuda.synchronize()
    allocated = torch.cuda.memory_allocated()
    merge(model, adapters, [1.0, -0.5], offload=True)
    assert torch.cuda.memory_allocated() == allocated  # no second copy of the weights on the GPU
    assert_bitwise(model, expected)
    unmerge(model)
    assert_bitwise(model, before)

    merge_module = sys.modules["quiver_hub.local.merging"]
    real, calls = merge_module.add_product, []

    def fails_on_the_third_module(weight, B, A, out):  # noqa: ANN001, ANN202
        calls.append(weight)
        if len(calls) == 3:
            raise RuntimeError("the GPU failed half-way")
        real(weight, B, A, out)

    monkeypatch.setattr(merge_module, "add_product", fails_on_the_third_module)
    with pytest.raises(RuntimeError, match="half-way"):
        merge(model, adapters, offload=True)
    assert len(calls) == 3
    assert_bitwise(model, before)
    monkeypatch.setattr(merge_module, "add_product", real)
    with merged(model, adapters, offload=True):
        assert not torch.equal(
            model.state_dict()["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"]
        )
    assert_bitwise(model, before)


def test_a_gpu_without_room_for_two_copies_says_to_offload_and_offload_merges(device: torch.device) -> None:
    if device.type != "cuda":
        pytest.skip("offload concerns models on a GPU")
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(2048, 2048, bias=False) for _ in range(4))).to(device)  # 64 MB
    factors = {str(i): algebra.Factors(torch.randn(8, 2048), torch.randn(2048, 8) * 0.01, 2.0) for i in range(4)}
    adapter = Adapter("a", {"r": 8}, factors)
    before = snapshot(model)
    torch.cuda.empty_cache()
    allocated = torch.cuda.memory_allocated()
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + (40 << 20)) / total)
    try:
        with pytest.raises(torch.OutOfMemoryError, match=r"offload=True"):
            merge(model, adapter)
        assert_bitwise(model, before)
        gc.collect()  # the exception's traceback is gone: what merge allocated must be too
        assert torch.cuda.memory_allocated() == allocated  # nothing held for a next merge
        merge(model, adapter, offload=True)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    merged_weights = snapshot(model)
    unmerge(model)
    assert_bitwise(model, before)
    merge(model, adapter)  # room again: the same weights the default way
    assert_bitwise(model, merged_weights)
    unmerge(model, free=True)


def test_bad_merges_change_nothing(tmp_path: Path, device: torch.device) -> None:
    folder = save_lora(tiny_llama(), tmp_path / "a", seed=1, r=4, lora_alpha=8, target_modules=["q_proj"])
    adapter = Adapter.load(folder)
    model = tiny_llama().to(device)
    before = snapshot(model)
    missing = Adapter(
        "missing",
        adapter.config,
        {**adapter.factors, "model.layers.9.self_attn.q_proj": adapter.factors["model.layers.0.self_attn.q_proj"]},
    )
    with pytest.raises(ValueError, match="adapts 'model.layers.9.self_attn.q_proj', which the model does not have"):
        merge(model, missing)
    wrong = tiny_gpt2().to(device)  # a model whose layers have other names and shapes
    with pytest.raises(ValueError, match="does not have"):
        merge(wrong, adapter)
    with pytest.raises(ValueError, match="2 weights for 1 adapters"):
        merge(model, adapter, [1.0, 2.0])
    assert_bitwise(model, before)
    merge(model, adapter)
    with pytest.raises(ValueError, match="already has merged adapters"):
        merge(model, adapter)
    with pytest.raises(RuntimeError, match="boom"), merged(tiny_llama().to(device), adapter) as m:
        raise RuntimeError("boom")
    merge(m, adapter)  # the context unmerged it on the way out: merging again is allowed
    unmerge(m, free=True)
    unmerge(model)
    assert_bitwise(model, before)
    with pytest.raises(FileNotFoundError, match="not a PEFT LoRA adapter"):
        Adapter.load(tmp_path)


def test_the_thin_client_imports_no_server_dependencies() -> None:
    code = (
        "import sys, quiver_hub; heavy = [m for m in ('sqlalchemy', 'fastapi', 'faiss', 'alembic', "
        "'sentence_transformers', 'quiver_hub.hub', 'quiver_hub.registry.models') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
