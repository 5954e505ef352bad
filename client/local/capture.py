"""What a model reads, for routing: the tokens of a chat (and which of them to route on), and the inputs of
its adapted modules captured with forward pre-hooks.

Which tokens are routed matters more than anything else on a real model (bench/README.md, "Retrieval on a
real library"): the chat template and the system prompt are the same for every input, so routing on them
sends every input to the same adapter. A chat is therefore run through the model whole (the model reads
the user's words in context), but only the tokens of the last user message are routed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from quiver_hub.paths import default_cache_dir

Message = Mapping[str, str]

# A little ordinary text, read by the model to measure what every input to a module shares (its mean):
# subtracted before routing, it stops that shared part deciding which adapter a token goes to.
REFERENCE = [
    "The weather was mild for the season, and people walked along the river after work.",
    "Please send me the report by Friday so that I can review it before the meeting.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "She bought three apples, a loaf of bread and some cheese at the market.",
    "How do I reset my password if I no longer have access to my email?",
    "The committee approved the budget after a long discussion about priorities.",
    "In 1969, astronauts landed on the Moon for the first time.",
    "Can you explain the difference between a list and a tuple in Python?",
    "The museum is open every day except Monday, from ten in the morning until six.",
    "He played the guitar quietly while the others were reading in the garden.",
    "Write a short poem about the sea at night.",
    "What are the main causes of inflation in a growing economy?",
    "The train to the airport leaves from platform four every twenty minutes.",
    "Our team fixed the bug and released a new version of the application.",
    "Translate this sentence into Spanish: the cat is sleeping on the sofa.",
    "Summarize the following paragraph in two sentences.",
]


def chat_tokens(tokenizer: Any, messages: Sequence[Message]) -> tuple[list[int], list[bool]]:
    """(token ids of the chat as the model sees it, with the assistant's turn opened; a mask of the tokens
    of the last user message's content). Needs a fast tokenizer (offsets) and a chat template."""
    users = [m for m in messages if m.get("role") == "user"]
    if not users or not users[-1].get("content"):
        raise ValueError("route on a chat needs a user message with content")
    content = users[-1]["content"]
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    start = text.rfind(content)
    if start < 0:
        raise ValueError("the chat template does not hold the user's message verbatim; pass input_ids and a mask")
    end = start + len(content)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [s >= start and e <= end and e > s for s, e in encoded["offset_mapping"]]
    if not any(mask):
        raise ValueError("no token of the user's message was found in the tokenized chat")
    return list(encoded["input_ids"]), mask


def text_tokens(tokenizer: Any, text: str) -> tuple[list[int], list[bool]]:
    """(token ids of a bare text, all of them routed)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError("the text has no tokens")
    return ids, [True] * len(ids)


def capture_inputs(
    model: torch.nn.Module,
    tokenizer: Any,
    text: str | Sequence[str] | None,
    modules: Collection[str],
    *,
    input_ids: Sequence[int] | torch.Tensor | None = None,
    mask: Sequence[bool] | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The inputs (tokens x in_features) of the named modules while the model reads `text` (or
    `input_ids`), captured with forward pre-hooks on the model's device; with `mask`, only the masked
    tokens' rows (a padded batch of texts: only the real tokens)."""
    present = {name: module for name, module in model.named_modules() if name in modules}
    if not present:
        raise ValueError(f"the model has none of the modules {sorted(modules)}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if input_ids is not None:
        inputs = {"input_ids": torch.as_tensor(input_ids).reshape(1, -1)}
    else:
        inputs = dict(tokenizer(text, return_tensors="pt", padding=not isinstance(text, str)))
    if mask is None and "attention_mask" in inputs:  # a padded batch: the padding is not routed
        mask = inputs["attention_mask"]
    keep = torch.as_tensor(mask, dtype=torch.bool).reshape(-1) if mask is not None else None
    captured: dict[str, list[torch.Tensor]] = {}

    def hook(name: str):  # noqa: ANN202
        def record(_module: torch.nn.Module, args: tuple) -> None:
            rows = args[0].detach().reshape(-1, args[0].shape[-1])
            captured.setdefault(name, []).append(rows[keep.to(rows.device)] if keep is not None else rows)

        return record

    hooks = [module.register_forward_pre_hook(hook(name)) for name, module in present.items()]
    try:
        with torch.no_grad():
            model(**{k: v.to(device) for k, v in inputs.items()})
    finally:
        for h in hooks:
            h.remove()
    return {name: torch.cat(rows) for name, rows in captured.items()}


def reference_means(
    model: torch.nn.Module, tokenizer: Any, modules: Collection[str], chat: bool | None = None
) -> dict[str, torch.Tensor]:
    """The mean input of each module over REFERENCE (every token, each text chat-formatted as a user
    message when `chat`, by default when the tokenizer has a chat template). Measured once per model: kept
    on the model, and on disk under QUIVER_CACHE/reference keyed by the model's weights, the tokenizer and
    the reference texts, so a new process reads them instead of running the model over every text (with
    progress on a terminal the first time)."""
    chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    cache: dict[str, torch.Tensor] = model.__dict__.setdefault("_quiver_reference", {}).setdefault(chat, {})
    missing = [m for m in modules if m not in cache]
    if missing:
        stored = reference_file(model, tokenizer, chat)
        if stored.is_file():
            cache.update({m: t for m, t in load_file(str(stored)).items() if m in missing})
            missing = [m for m in missing if m not in cache]
    if missing:
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for text in progress(REFERENCE, f"measuring {len(missing)} modules' mean inputs once for this model"):
            ids = (
                chat_tokens(tokenizer, [{"role": "user", "content": text}])[0]
                if chat
                else text_tokens(tokenizer, text)[0]
            )
            states = capture_inputs(model, tokenizer, None, missing, input_ids=ids)
            for m, h in states.items():
                sums[m] = sums.get(m, 0) + h.double().sum(0)
            count += len(ids)
        cache.update({m: (s / count).float().cpu() for m, s in sums.items()})
        keep_on_disk(stored, cache)
    return {m: cache[m] for m in modules if m in cache}


def fingerprint(model: torch.nn.Module, tokenizer: Any, chat: bool) -> str:
    """What the reference means depend on, hashed: every parameter's name, shape and dtype and a strided
    sample of its values (a fine-tuned or merged model differs there; reading every weight of a 7B model
    would cost more than it saves), the tokenizer's vocabulary size and chat template, the texts."""
    digest = hashlib.sha256(json.dumps([REFERENCE, chat, getattr(tokenizer, "chat_template", None)]).encode())
    digest.update(str(len(tokenizer) if hasattr(tokenizer, "__len__") else "").encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 256)][:256].to("cpu", torch.float64)
            digest.update(f"{name}{tuple(p.shape)}{p.dtype}".encode() + sample.numpy().tobytes())
    return digest.hexdigest()


def reference_file(model: torch.nn.Module, tokenizer: Any, chat: bool) -> Path:
    return default_cache_dir() / "reference" / f"{fingerprint(model, tokenizer, chat)}.safetensors"


def keep_on_disk(path: Path, means: Mapping[str, torch.Tensor]) -> None:
    """Write the means atomically (another process may be reading); a cache that cannot be written is
    only slower."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        save_file({m: t.contiguous() for m, t in means.items()}, str(tmp))
        os.replace(tmp, path)
    except OSError:
        pass


def progress(items: Sequence[str], what: str) -> Iterator[str]:
    """`items`, with a progress bar on a terminal (nothing elsewhere)."""
    if not sys.stderr.isatty():
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=what, console=None, transient=True)
