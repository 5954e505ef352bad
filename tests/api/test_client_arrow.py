"""client.apply_arrow against PEFT's Arrow, its two mixing strategies, and prototypes from the hub."""

from __future__ import annotations

from pathlib import Path

import peft
import pytest
import torch

import quiver_hub.local.arrow
from examples.make_adapter import tiny_llama
from quiver_hub import Adapter, Hub, apply_arrow, merged, remove_arrow
from tests.support.servers import LiveServer


def separated(folder: Path, seed: int, r: int = 4, targets: tuple[str, ...] = ("q_proj", "v_proj", "o_proj")) -> Path:
    """A PEFT adapter whose factors have a decaying spectrum, so the top singular vector is well
    separated (PEFT's power iteration then agrees with the exact prototype)."""
    base = tiny_llama()
    torch.manual_seed(seed)
    model = peft.get_peft_model(
        base, peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False)
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_().mul_(0.2 ** torch.arange(r, dtype=p.dtype))
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def experts(tmp_path: Path) -> list[Path]:
    return [separated(tmp_path / f"e{i}", seed=i) for i in range(5)]


IDS = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(3))


@pytest.fixture(params=["cpu", "cuda"])
def device(request: pytest.FixtureRequest) -> torch.device:
    """The model's device (the adapters are loaded on the CPU either way)."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device(request.param)


@pytest.mark.parametrize("top_k, temperature", [(2, 1.0), (3, 0.5), (1, 1.0)])
def test_apply_arrow_matches_peft(experts: list[Path], top_k: int, temperature: float, device: torch.device) -> None:
    reference = peft.create_arrow_model(
        tiny_llama().to(device),
        task_specific_adapter_paths=[str(e) for e in experts],
        arrow_config=peft.ArrowConfig(top_k=top_k, router_temperature=temperature),
    )
    model = tiny_llama().to(device)
    apply_arrow(model, experts, top_k=top_k, temperature=temperature)
    ids = IDS.to(device)
    with torch.no_grad():
        expected, got = reference(ids).logits, model(ids).logits
        base = tiny_llama().to(device)(ids).logits
    assert not torch.allclose(got, base, atol=1e-3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_grouped_mixing_equals_dense_and_removal_restores(
    experts: list[Path], monkeypatch: pytest.MonkeyPatch, device: torch.device
) -> None:
    model, ids = tiny_llama().to(device), IDS.to(device)
    with torch.no_grad():
        base = model(ids).logits
    apply_arrow(model, experts, top_k=2)
    with torch.no_grad():
        dense = model(ids).logits
    remove_arrow(model)
    monkeypatch.setattr(quiver_hub.local.arrow, "DENSE_RANKS", 0)  # force the grouped-by-expert path (a CPU's only)
    apply_arrow(model, experts, top_k=2)
    with torch.no_grad():
        grouped = model(ids).logits
    torch.testing.assert_close(grouped, dense, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="already applied"):
        apply_arrow(model, experts)
    remove_arrow(model)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base)


def test_bf16_model(experts: list[Path], device: torch.device) -> None:
    """Mixed in fp32 on a CPU, in bf16 on a GPU: close to the fp32 model either way."""
    model = tiny_llama().to(device, torch.bfloat16)
    apply_arrow(model, experts, top_k=2)
    reference = tiny_llama()
    apply_arrow(reference, experts, top_k=2)
    with torch.no_grad():
        got, expected = model(IDS.to(device)).logits.float().cpu(), reference(IDS).logits
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert float((got - expected).abs().mean()) < 0.05 * float(expected.abs().mean())


def test_prototypes_from_the_hub(server: LiveServer, tmp_path: Path, experts: list[Path]) -> None:
    token = server.token("alice")
    with Hub(server.url, token, cache_dir=tmp_path / "cache") as client_hub:
        pulled = []
        for i, folder in enumerate(experts):
            client_hub.push(folder, f"alice/expert{i}")
            pulled.append(Adapter.load(client_hub.pull(f"alice/expert{i}")))
        assert pulled[0].origin[0] == "alice/expert0" and len(pulled[0].origin[1]) == 40
        from_hub = tiny_llama()
        apply_arrow(from_hub, pulled, top_k=2, prototypes=client_hub.prototypes_for(pulled))
        by_spec = client_hub.prototypes_for([f"alice/expert0@{pulled[0].origin[1]}", experts[0]])
        assert by_spec[1] is None and by_spec[0].keys() == client_hub.prototypes_for(pulled)[0].keys()
        with pytest.warns(DeprecationWarning, match="prototypes_for"):  # the old way still works, and says so
            apply_arrow(again := tiny_llama(), pulled, top_k=2, hub=client_hub)
    local = tiny_llama()
    apply_arrow(local, experts, top_k=2)
    with torch.no_grad():
        torch.testing.assert_close(from_hub(IDS).logits, local(IDS).logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(again(IDS).logits, local(IDS).logits, rtol=0, atol=1e-5)


def test_a_prior_scales_each_experts_odds(experts: list[Path]) -> None:
    """With a prior p, a token's weights are the softmax of |<x, v_e>| / T + log p_e over the top k of
    that sum (brute force here), and an expert whose prior is 0 is never chosen."""
    loaded = [Adapter.load(e) for e in experts]
    module = "model.layers.0.self_attn.q_proj"
    stacked = []
    for a in loaded:
        f = a.factors[module]
        stacked.append((f.A, f.B, f.scaling, quiver_hub.local.arrow.prototype(f.A, f.B)[0]))
    prior = torch.tensor([0.5, 0.1, 0.2, 0.15, 0.05])
    router = quiver_hub.local.arrow.ArrowRouter(stacked, 2, 0.7, torch.float32, torch.device("cpu"), None, prior.log())
    x = torch.randn(40, stacked[0][0].shape[1], generator=torch.Generator().manual_seed(0))
    P = torch.stack([v for *_, v in stacked]).float()
    logits = (x @ P.T).abs() / 0.7 + prior.log()
    expected = torch.zeros_like(logits)
    for t in range(len(x)):
        top = logits[t].argsort(descending=True)[:2]
        expected[t, top] = torch.softmax(logits[t, top], dim=0)
    torch.testing.assert_close(router.weights(x), expected, rtol=0, atol=1e-6)

    # One expert with a prior above 0: every token gets it at weight 1, which is merging it.
    model, reference = tiny_llama(), tiny_llama()
    apply_arrow(model, experts, top_k=3, prior=[0, 0, 1.0, 0, 0])
    with merged(reference, loaded[2]), torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, reference(IDS).logits, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="prior"):
        apply_arrow(tiny_llama(), experts, prior=[1.0, 0.5])
