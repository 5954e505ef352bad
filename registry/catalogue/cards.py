"""Model cards (README.md): the YAML front matter Hugging Face uses for metadata."""

from __future__ import annotations

import re
from typing import Any

import yaml

from quiver_hub.registry.limits import (
    MAX_FRONT_MATTER_CHARS,
    MAX_LICENSE_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TASK_CHARS,
)

FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)


class NoAliasLoader(yaml.SafeLoader):
    """safe_load, without anchors and aliases: a few hundred bytes of nested aliases expand to gigabytes
    (the "billion laughs"), and card metadata never needs them."""

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed in card metadata")
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """Card metadata from YAML text: bounded, no aliases; yaml.YAMLError when it does not parse."""
    if len(text) > MAX_FRONT_MATTER_CHARS:
        raise yaml.YAMLError(f"card metadata is longer than {MAX_FRONT_MATTER_CHARS} characters")
    try:
        return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader
    except RecursionError:
        raise yaml.YAMLError("card metadata is nested too deeply") from None


def front_matter(card: str | None) -> dict[str, Any]:
    """The card's YAML metadata as a dict ({} when it has none, it does not parse or is not a mapping)."""
    if not card:
        return {}
    match = FRONT_MATTER.match(card)
    if not match:
        return {}
    try:
        data = load_yaml(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def yaml_errors(card: str) -> list[str]:
    """Problems a person should fix in a card's front matter (empty when it is fine or absent)."""
    match = FRONT_MATTER.match(card or "")
    if not match:
        return []
    try:
        data = load_yaml(match.group(1))
    except yaml.YAMLError as e:
        return [f"the card's YAML metadata does not parse: {e}"]
    return [] if data is None or isinstance(data, dict) else ["the card's YAML metadata must be a mapping"]


def card_fields(card: str | None) -> dict[str, Any]:
    """Adapter metadata a card carries: description (its first paragraph), tags, license, task
    (pipeline_tag) and base model, when present."""
    meta = front_matter(card)
    out: dict[str, Any] = {}
    if description := card_description(card):
        out["description"] = description
    tags = meta.get("tags")
    if isinstance(tags, str):
        tags = [tags]
    if isinstance(tags, list):
        clean = [
            str(t)
            for t in tags
            if isinstance(t, str | int | float)
            and 0 < len(str(t)) <= MAX_TAG_CHARS
            and not str(t).startswith("base_model:")  # PEFT's, with a path; the hub derives its own
        ]
        if clean:
            out["tags"] = clean[:MAX_TAGS]
    license_ = meta.get("license")
    if isinstance(license_, str) and 0 < len(license_) <= MAX_LICENSE_CHARS:
        out["license"] = license_
    task = meta.get("pipeline_tag")
    if isinstance(task, str) and 0 < len(task) <= MAX_TASK_CHARS:
        out["task"] = task
    base = meta.get("base_model")  # PEFT writes it; the Hub allows a list of one
    if isinstance(base, list) and len(base) == 1:
        base = base[0]
    if isinstance(base, str) and base.strip():
        out["base_model"] = base.strip()
    return out


def card_description(card: str | None, limit: int = 500) -> str:
    """The first paragraph of prose in a card (after the YAML, headings, comments and badges)."""
    if not card:
        return ""
    body = FRONT_MATTER.sub("", card, count=1)
    body = re.sub(r"<!--.*?-->", "", body, flags=re.S)
    for block in re.split(r"\n\s*\n", body):
        lines = [ln.strip() for ln in block.strip().splitlines()]
        prose = [ln for ln in lines if ln and not ln.startswith(("#", "!", "|", "```", "<", "- **"))]
        if prose:
            return " ".join(prose)[:limit]
    return ""
