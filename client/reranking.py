"""Re-ranking a route's candidates with the user's own model.

Routing from the weights alone (Arrow) narrows a library to a few candidates well: on the zero-shot
benchmark the right adapter is in the top 3 nearly always, but not always first (bench/README.md,
"Zero-shot routing on libraries no default was chosen on"). The client holds the model, so it can ask the
model itself: each candidate is merged in turn (one fused pass per layer, restored bitwise) and the
distribution of the next token at the end of the input is scored:

- "confidence": its largest probability. An adapter trained for this kind of input answers it
  decisively; an adapter of another task leaves the model hesitating between its own answer and the
  base model's.
- "shift": its KL divergence from the base model's distribution, how much the candidate changes what the
  model would say next.

Costs one forward pass of the input per candidate (and one more for "shift"). Only the candidates the hub
returned to the caller are scored, so re-ranking sees nothing the route did not already show.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from quiver_hub.adapter import Adapter
from quiver_hub.merging import merged

CRITERIA = ("confidence", "shift")


@torch.no_grad()
def next_token_logprobs(model: torch.nn.Module, input_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """log-probabilities (float32, vocabulary) of the token after `input_ids`."""
    device = next(model.parameters()).device
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=device).reshape(1, -1)
    return torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)


def candidate_scores(
    model: torch.nn.Module, input_ids: Sequence[int] | torch.Tensor, candidates: Sequence[Adapter]
) -> dict[str, list[float]]:
    """criterion -> one score per candidate, higher is better, for every criterion of CRITERIA."""
    base = next_token_logprobs(model, input_ids)
    scores: dict[str, list[float]] = {c: [] for c in CRITERIA}
    for adapter in candidates:
        with merged(model, adapter):
            logp = next_token_logprobs(model, input_ids)
        scores["confidence"].append(logp.max().exp().item())
        scores["shift"].append(torch.sum(logp.exp() * (logp - base)).item())
    return scores
