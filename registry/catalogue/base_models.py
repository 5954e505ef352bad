"""Naming an adapter's base model as the Hugging Face Hub names it: which of the names an upload carries
wins, local paths kept out, and the names close to one the hub has never seen (a typo makes a new base
model on the home page, and an adapter nobody finds)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from quiver_hub.registry.errors import InvalidAdapter
from quiver_hub.registry.limits import MAX_BASE_MODEL_CHARS
from quiver_hub.registry.models import AdapterRepo

LOCAL_PATH = re.compile(r"^(/|~|\.{1,2}[/\\]|\\|[A-Za-z]:[/\\])")  # /x, ~/x, ./x, ..\x, \\host, C:\x


def is_local_path(name: str) -> bool:
    return bool(LOCAL_PATH.match(name.strip()))


def check_base_model(base_model: str) -> str:
    """A base model is named as the Hugging Face Hub names it, never by a path on someone's disk."""
    base_model = base_model.strip()
    if not base_model or len(base_model) > MAX_BASE_MODEL_CHARS:
        raise InvalidAdapter(f"the base model must be a name of 1 to {MAX_BASE_MODEL_CHARS} characters")
    if is_local_path(base_model):
        raise InvalidAdapter(
            f"the base model {base_model!r} is a path on the machine that trained it; name it as the Hugging Face "
            "Hub does (for example meta-llama/Llama-2-7b-hf) with the base_model upload field, "
            "`quiver push --base-model`, or `base_model:` in the card's metadata"
        )
    return base_model


def choose(given: str | None, card: str | None, config: str) -> tuple[str, list[str]]:
    """The base model of an upload and what to tell its publisher: the upload field when given (it is
    the publisher's word), else the card's `base_model:`, else the config's `base_model_name_or_path`,
    except that a local path never wins over a hub id: PEFT's save_pretrained writes the path a model
    was loaded from into the card, beside the right id in the config (or the reverse)."""
    if given:
        return check_base_model(given), []
    if card and config and is_local_path(card) and not is_local_path(config):
        return check_base_model(config), [
            f"the card names the base model by a local path ({card}); used the config's {config} instead"
        ]
    if card and config and is_local_path(config) and not is_local_path(card):
        return check_base_model(card), []
    return check_base_model(card or config), []


def close_to(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known names a typo of `name` would be (case and spelling), closest first."""
    by_lower = {k.lower(): k for k in known if k != name}
    return [by_lower[m] for m in difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.8)]


def public_base_models(session: Session) -> list[str]:
    """The base models of the hub's public adapters (what anyone may be told exists)."""
    query = (
        select(AdapterRepo.base_model)
        .where(AdapterRepo.visibility == "public", AdapterRepo.base_model != "")
        .distinct()
    )
    return list(session.scalars(query))


def new_name_notice(session: Session, base_model: str) -> list[str]:
    """A warning when a base model is new to the hub's public adapters and close to one it has."""
    known = public_base_models(session)
    if base_model in known:
        return []
    close = close_to(base_model, known)
    if not close:
        return []
    return [f"base model {base_model} is new on this hub; did you mean {' or '.join(close)}?"]
