"""`quiver_hub.Hub`: the HTTP client (`quiver_hub.api.HubClient`) with what needs a local model beside it:
routing a model's own input (its hidden states captured here, quiver_hub.local.capture) and publishing
a few-shot composition. The HTTP client itself does no model work, and the model code talks no HTTP."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quiver_hub.api import HubClient, check_route_method

if TYPE_CHECKING:
    import torch

    from quiver_hub.local.composition import Composition
    from quiver_hub.routing import Routing


class Hub(HubClient):
    """A hub: everything HubClient does over HTTP, and routing or publishing from a local model."""

    def route(
        self,
        hidden_states: Mapping[str, Any] | None = None,
        *,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        messages: Sequence[Mapping[str, str]] | None = None,
        text: str | None = None,
        input_ids: Sequence[int] | torch.Tensor | None = None,
        mask: Sequence[bool] | torch.Tensor | None = None,
        base_model: str | None = None,
        top_k: int | None = None,
        temperature: float = 1.0,
        limit: int = 10,
        task: str | None = None,
        tags: Sequence[str] = (),
        namespace: str | None = None,
        method: str = "arrow+examples",
    ) -> Routing:
        """Which adapters fit this input? Arrow retrieval on the model's own hidden states.

        Give the inputs of adapted modules (module -> tokens x in_features); or a model and its tokenizer
        with `messages` (a chat as apps hold it: the chat is run whole, the last user message's tokens are
        routed), `text` (a bare prompt, every token routed) or `input_ids` with a `mask` of the tokens to
        route. Inputs too long for one request are split over several and combined exactly. The answer
        is a list of adapters, best first, with merge_plan() for the recommended merge.

        method (docs/routing-and-clustering.md): "arrow", the paper's, on the states as they are;
        "arrow-centered", on the states minus each module's mean input over ordinary text
        (capture.reference_means), which all inputs share; "arrow+examples" (the default), centered, and
        averaged with how close the user's words are to each adapter's example inputs."""
        check_route_method(method)  # before the model runs
        if hidden_states is None:
            if model is None or tokenizer is None:
                raise ValueError("give hidden_states, or a model and its tokenizer with messages, text or input_ids")
            base_model = base_model or getattr(model, "name_or_path", None) or model.config.name_or_path
            hidden_states, text = self._model_states(
                model, tokenizer, base_model, messages, text, input_ids, mask, method
            )
        return super().route(
            hidden_states,
            base_model=base_model,
            text=text,
            top_k=top_k,
            temperature=temperature,
            limit=limit,
            task=task,
            tags=tags,
            namespace=namespace,
            method=method,
        )

    def _model_states(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        base_model: str,
        messages: Sequence[Mapping[str, str]] | None,
        text: str | None,
        input_ids: Any,
        mask: Any,
        method: str,
    ) -> tuple[dict[str, torch.Tensor], str | None]:
        """The inputs of the modules the hub routes on, for this chat, text or tokens (centered unless the
        method is "arrow"), and the user's words."""
        from quiver_hub.local.capture import capture_inputs, chat_tokens, reference_means, text_tokens

        words = None
        if messages is not None:
            input_ids, mask = chat_tokens(tokenizer, messages)
            words = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
        elif text is not None:
            input_ids, mask = text_tokens(tokenizer, text)
            words = text
        elif input_ids is None:
            raise ValueError("give messages, text or input_ids to route")
        known = self.route_modules(base_model)
        if not known["modules"]:
            raise ValueError(f"no adapter of {base_model} is on the hub to route to")
        states = capture_inputs(model, tokenizer, None, known["modules"], input_ids=input_ids, mask=mask)
        if method != "arrow":
            means = reference_means(model, tokenizer, known["modules"], chat=messages is not None)
            states = {m: h - means[m].to(h.device, h.dtype) for m, h in states.items()}
        return states, words

    def publish_composition(
        self,
        composition: Composition,
        repo: str,
        base_model: str,
        rank: int | None = None,
        description: str | None = None,
        visibility: str | None = None,
        examples: Sequence[str] | None = None,
    ) -> dict:
        """Publish a composition (quiver_hub.compose) as an ordinary PEFT adapter: the weighted sum of its
        members' deltas as concatenated factors, or rank-`rank` compressed, with its lineage (every member
        version and its weight), which the hub checks against the versions you may see."""
        lineage = {
            "method": f"composition:{composition.method}",
            "rank": rank,
            "versions": [
                {"id": a.origin[0], "revision": a.origin[1], "weight": w}
                if a.origin
                else {"id": a.name, "weight": w, "local": True}
                for a, w in zip(composition.adapters, composition.weights, strict=True)
            ],
        }
        with tempfile.TemporaryDirectory() as tmp:
            folder = composition.save(Path(tmp) / "composition", base_model, rank)
            parts = ", ".join(f"{v['id']} x {v['weight']:.3g}" for v in lineage["versions"])
            (folder / "README.md").write_text(
                f"# {repo}\n\n{description or 'A few-shot composition of library adapters.'}\n\n"
                f"Composed ({composition.method}) from: {parts}.\n"
            )
            return self.push(
                folder,
                repo,
                description=description,
                visibility=visibility,
                examples=examples,
                derived_from=lineage,
            )
