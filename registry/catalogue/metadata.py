"""An adapter's metadata as a publisher gives it: checked fields, the text embedded for search, its card."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.catalogue.cards import card_fields
from quiver_hub.registry.catalogue.files import README_FILE
from quiver_hub.registry.catalogue.reads import find_adapter
from quiver_hub.registry.errors import InvalidRequest
from quiver_hub.registry.intake.analysis import describe
from quiver_hub.registry.limits import MAX_DESCRIPTION_CHARS, MAX_LICENSE_CHARS, MAX_TAG_CHARS, MAX_TAGS, MAX_TASK_CHARS
from quiver_hub.registry.models import AdapterRepo, Version, utcnow
from quiver_hub.registry.search.embedder import TextEmbedder
from quiver_hub.registry.search.vectors import to_bytes
from quiver_hub.registry.storage.blobs import BlobStore

VISIBILITIES = ("public", "private")


@dataclass(frozen=True)
class AdapterMeta:
    """Adapter-level metadata sent with a publish or a PATCH; None means "leave as it is"."""

    description: str | None = None
    task: str | None = None
    tags: list[str] | None = None
    license: str | None = None
    visibility: str | None = None
    base_model: str | None = None  # publish only: sets or corrects the base model the config names

    def check(self) -> AdapterMeta:
        if self.visibility is not None and self.visibility not in VISIBILITIES:
            raise InvalidRequest(f"visibility must be 'public' or 'private', got {self.visibility!r}")
        if self.tags is not None and len(self.tags) > MAX_TAGS:
            raise InvalidRequest(f"at most {MAX_TAGS} tags, got {len(self.tags)}")
        for tag in self.tags or []:
            if not tag or len(tag) > MAX_TAG_CHARS:
                raise InvalidRequest(f"tag {tag[:80]!r} must be 1 to {MAX_TAG_CHARS} characters")
        for attr, limit in (
            ("description", MAX_DESCRIPTION_CHARS),
            ("task", MAX_TASK_CHARS),
            ("license", MAX_LICENSE_CHARS),
        ):
            value = getattr(self, attr)
            if value is not None and len(value) > limit:
                raise InvalidRequest(f"{attr} must be at most {limit} characters, got {len(value)}")
        return self

    def with_card(self, card: str | None) -> AdapterMeta:
        """Fields this upload leaves unset, filled from the model card (description, tags, license, task)."""
        found = card_fields(card)
        return replace(self, **{k: v for k, v in found.items() if getattr(self, k) is None}).check()

    def apply(self, adapter: AdapterRepo) -> None:
        for attr in ("description", "task", "tags", "license", "visibility"):
            value = getattr(self, attr)
            if value is not None:
                setattr(adapter, attr, value)
        adapter.updated_at = utcnow()


def adapter_text(description: str | None, task: str | None, tags: list[str] | None, card: str | None) -> str:
    """What text search embeds for an adapter."""
    return describe(description or "", task, tags or [], card)


def text_embedding(
    embedder: TextEmbedder, adapter: AdapterRepo, card: str | None, known: tuple[str, bytes] | None = None
) -> bytes:
    """The adapter's text embedding: `known` (embedded before the write lock, so that no writer waits on the
    embedder) when the text is still what it was embedded from, else embedded now."""
    text = adapter_text(adapter.description, adapter.task, adapter.tags, card)
    if known is not None and known[0] == text:
        return known[1]
    return to_bytes(embedder.embed_one(text))


def embed_ahead(
    sessions: sessionmaker[Session],
    embedder: TextEmbedder,
    namespace: str,
    name: str,
    meta: AdapterMeta,
    card: str | None = None,
    store: BlobStore | None = None,
) -> tuple[str, bytes]:
    """The text an adapter will have once `meta` is applied, read without a lock, and its embedding: with
    `card`, a new version's; with `store`, the latest version's."""
    with sessions() as session:
        current = find_adapter(session, namespace, name)
        description, task, tags = (
            getattr(meta, f) if getattr(meta, f) is not None else getattr(current, f, None)
            for f in ("description", "task", "tags")
        )
        if store is not None and current is not None and current.versions:
            card = version_card(store, current.versions[-1])
    text = adapter_text(description, task, tags, card)
    return text, to_bytes(embedder.embed_one(text))


def version_card(store: BlobStore, version: Version | None) -> str | None:
    """The model card (README.md) of a stored version, if it has one."""
    readme = version.file(README_FILE) if version else None
    return store.local_path(readme.sha256).read_text(encoding="utf-8") if readme else None


def parse_tags(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    return [t.strip() for t in raw.split(",") if t.strip()]
