"""Model cards (README.md): the YAML front matter Hugging Face uses for metadata."""

from __future__ import annotations

import re
from typing import Any

import yaml

FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)


def front_matter(card: str | None) -> dict[str, Any]:
    """The card's YAML metadata as a dict ({} when it has none or it is not a mapping)."""
    if not card:
        return {}
    match = FRONT_MATTER.match(card)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def yaml_errors(card: str) -> list[str]:
    """Problems a person should fix in a card's front matter (empty when it is fine or absent)."""
    match = FRONT_MATTER.match(card or "")
    if not match:
        return []
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as e:
        return [f"the card's YAML metadata does not parse: {e}"]
    return [] if data is None or isinstance(data, dict) else ["the card's YAML metadata must be a mapping"]


def card_fields(card: str | None) -> dict[str, Any]:
    """Adapter metadata a card carries: description (its first paragraph), tags, license and task
    (pipeline_tag), when present."""
    meta = front_matter(card)
    out: dict[str, Any] = {}
    if description := card_description(card):
        out["description"] = description
    tags = meta.get("tags")
    if isinstance(tags, str):
        tags = [tags]
    if isinstance(tags, list):
        clean = [str(t) for t in tags if isinstance(t, str | int | float) and 0 < len(str(t)) <= 64]
        if clean:
            out["tags"] = clean
    license_ = meta.get("license")
    if isinstance(license_, str) and 0 < len(license_) <= 64:
        out["license"] = license_
    task = meta.get("pipeline_tag")
    if isinstance(task, str) and 0 < len(task) <= 255:
        out["task"] = task
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
