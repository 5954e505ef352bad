"""Arrow forward of one 1024 -> 2816 layer with E = 8 and 32 rank-16 experts, 256 and 2048 tokens,
fp32 and bf16: ours (client.arrow) vs PEFT's ArrowLoraLinearLayer.forward, on the same experts,
prototypes and inputs (fp32 outputs checked equal before timing; in bf16 PEFT routes on bf16
logits, ours on fp32, so the difference is reported, not asserted).

    python -m bench.bench_arrow [--device cuda]
"""

from __future__ import annotations

from functools import partial

import torch
from peft import ArrowConfig
from peft.tuners.lora.arrow import ArrowLoraLinearLayer
from torch import nn

from bench.common import DEVICE, median_time, table
from quiver_hub.local.arrow import ArrowRouter

IN, OUT, RANK, TOP_K, REPEAT = 1024, 2816, 16, 3, 5


def experts(e: int, dtype: torch.dtype) -> tuple[nn.ModuleDict, nn.ModuleDict, dict[str, float]]:
    torch.manual_seed(e)
    names = [f"task_{i}" for i in range(e)]
    lora_A = nn.ModuleDict({n: nn.Linear(IN, RANK, bias=False) for n in names}).to(DEVICE, dtype)
    lora_B = nn.ModuleDict({n: nn.Linear(RANK, OUT, bias=False) for n in names}).to(DEVICE, dtype)
    with torch.no_grad():
        for n in names:
            lora_B[n].weight.normal_(0, 0.02)
    return lora_A, lora_B, {n: 2.0 for n in names}


def arrow_config(names: list[str]) -> ArrowConfig:
    config = ArrowConfig(top_k=TOP_K, router_temperature=1.0)
    config.task_adapter_names = names  # what create_arrow_model sets
    return config


def rows() -> list[list[str]]:
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        for e in (8, 32):
            lora_A, lora_B, scaling = experts(e, dtype)
            names = list(scaling)
            peft_layer = ArrowLoraLinearLayer(IN, arrow_config(names))
            peft_layer.build_prototypes(lora_A, lora_B)
            ours_experts = [
                (lora_A[n].weight.detach(), lora_B[n].weight.detach(), scaling[n], peft_layer.prototypes[i].float())
                for i, n in enumerate(names)
            ]
            ours = ArrowRouter(
                ours_experts,
                TOP_K,
                1.0,
                dtype,
                DEVICE,
            )
            prior = torch.rand(e, generator=torch.Generator().manual_seed(e)) + 0.1  # apply_arrow(..., prior=)
            with_prior = ArrowRouter(ours_experts, TOP_K, 1.0, dtype, DEVICE, log_prior=prior.log())
            for tokens in (256, 2048):
                x = torch.randn(1, tokens, IN).to(DEVICE, dtype)
                with torch.no_grad():
                    expected = peft_layer(x, lora_A, lora_B, nn.Identity(), scaling).float()
                    got = ours.delta(x).float()
                    if dtype == torch.float32:  # same routing, same outputs
                        error = float((got - expected).abs().max() / expected.abs().max())
                        assert error < 1e-4, error
                    else:  # PEFT routes on bf16 logits, so near-ties can pick other experts: report only
                        error = float((got - expected).abs().mean() / expected.abs().mean())
                    t_peft = median_time(partial(peft_layer, x, lora_A, lora_B, nn.Identity(), scaling), REPEAT)
                    t_ours = median_time(partial(ours.delta, x), REPEAT)
                    t_prior = median_time(partial(with_prior.delta, x), REPEAT)
                path = "dense low-rank" if ours.dense else "grouped by expert"
                out.append(
                    [
                        str(dtype).removeprefix("torch."),
                        str(e),
                        str(tokens),
                        path,
                        f"{1e3 * t_ours:.2f}",
                        f"{1e3 * t_peft:.2f}",
                        f"{t_peft / t_ours:.1f}x",
                        f"{1e3 * t_prior:.2f}",
                        f"{t_peft / t_prior:.1f}x",
                        f"{error:.1e}",
                    ]
                )
    return out


def main() -> None:
    print(
        f"Arrow routing + mixing of one {IN}->{OUT} layer, rank-{RANK} experts, top_k={TOP_K}, "
        f"{torch.cuda.get_device_name(DEVICE) if DEVICE.type == 'cuda' else f'{torch.get_num_threads()} threads'}; "
        f"median of {REPEAT} (the base layer's own GEMM excluded for both)"
    )
    print(
        table(
            [
                "dtype",
                "experts",
                "tokens",
                "our path",
                "ours (ms)",
                "PEFT (ms)",
                "PEFT / ours",
                "ours, prior (ms)",
                "PEFT / ours, prior",
                "difference to PEFT (fp32: max, bf16: mean)",
            ],
            rows(),
        )
    )


if __name__ == "__main__":
    main()
