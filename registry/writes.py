"""Changing the registry: publish a version, edit an adapter, delete adapters and versions.

Publishing order, so that a crash at any point leaves no half-visible version:
1. the hub stages every uploaded file in the blob store's tmp/ (hashed, fsynced);
2. the files are validated (nothing is stored on failure; staged files are discarded);
3. in one transaction: adapter row (locked), version, blobs and files are written and flushed,
   the staged files are renamed to their content addresses, and the transaction commits last.
A crash before the commit leaves at most unreferenced blobs, which `quiver gc` removes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.accounts import Principal, require_write
from quiver_hub.registry.analysis import VersionAnalysis, analyse_version, describe
from quiver_hub.registry.blobs import BlobStore, StagedFile
from quiver_hub.registry.cards import card_fields
from quiver_hub.registry.change_feed import record_change
from quiver_hub.registry.db import writing
from quiver_hub.registry.embedder import TextEmbedder
from quiver_hub.registry.errors import Conflict, InvalidRequest
from quiver_hub.registry.gc import purge_blobs
from quiver_hub.registry.models import Adapter, Blob, Embedding, File, Prototype, Version, utcnow
from quiver_hub.registry.names import check_repo_id
from quiver_hub.registry.reads import VersionIdentity, find_adapter, get_adapter, get_version
from quiver_hub.registry.validation import README_FILE, AdapterSummary, validate_adapter
from quiver_hub.registry.vectors import to_bytes

VISIBILITIES = ("public", "private")


@dataclass(frozen=True)
class AdapterMeta:
    """Adapter-level metadata sent with a publish or a PATCH; None means "leave as it is"."""

    description: str | None = None
    task: str | None = None
    tags: list[str] | None = None
    license: str | None = None
    visibility: str | None = None

    def check(self) -> AdapterMeta:
        if self.visibility is not None and self.visibility not in VISIBILITIES:
            raise InvalidRequest(f"visibility must be 'public' or 'private', got {self.visibility!r}")
        for tag in self.tags or []:
            if not tag or len(tag) > 64:
                raise InvalidRequest(f"tag {tag!r} must be 1 to 64 characters")
        if self.task is not None and len(self.task) > 255:
            raise InvalidRequest("task must be at most 255 characters")
        if self.license is not None and len(self.license) > 64:
            raise InvalidRequest("license must be at most 64 characters")
        return self

    def with_card(self, card: str | None) -> AdapterMeta:
        """Fields this upload leaves unset, filled from the model card (description, tags, license, task)."""
        found = card_fields(card)
        return replace(self, **{k: v for k, v in found.items() if getattr(self, k) is None}).check()

    def apply(self, adapter: Adapter) -> None:
        for field in ("description", "task", "tags", "license", "visibility"):
            value = getattr(self, field)
            if value is not None:
                setattr(adapter, field, value)
        adapter.updated_at = utcnow()


@dataclass(frozen=True)
class Prepared:
    """What a publish computes before it takes any lock."""

    summary: AdapterSummary
    analysis: VersionAnalysis
    card: str | None
    embedder: TextEmbedder
    derived_from: dict | None = None


def text_embedding(embedder: TextEmbedder, adapter: Adapter, card: str | None) -> bytes:
    return to_bytes(embedder.embed_one(describe(adapter.description or "", adapter.task, adapter.tags or [], card)))


def version_card(store: BlobStore, version: Version | None) -> str | None:
    """The model card (README.md) of a stored version, if it has one."""
    readme = version.file(README_FILE) if version else None
    return store.path(readme.sha256).read_text(encoding="utf-8") if readme else None


def parse_tags(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    return [t.strip() for t in raw.split(",") if t.strip()]


def revision_id(repo_id: str, number: int, files: dict[str, StagedFile]) -> str:
    """A 40-hex id for a version (what Hugging Face clients pin): a hash of name, number and content."""
    manifest = "".join(f"{path}\0{f.sha256}\0{f.size}\n" for path, f in sorted(files.items()))
    return hashlib.sha1(f"{repo_id}\n{number}\n{manifest}".encode(), usedforsecurity=False).hexdigest()


def publish(
    sessions: sessionmaker[Session],
    store: BlobStore,
    principal: Principal,
    namespace: str,
    name: str,
    files: dict[str, StagedFile],
    meta: AdapterMeta,
    embedder: TextEmbedder,
    derived_from: dict | None = None,
) -> Version:
    """Publish staged files as the next version of namespace/name. Consumes the staged files.

    The version's analysis (prototypes, sketch, embeddings) is computed first and committed with it:
    a version is never visible without its embeddings.
    """
    try:
        check_repo_id(namespace, name)
        meta.check()
        paths = {path: f.path for path, f in files.items()}
        summary = validate_adapter(paths)
        analysis = analyse_version(paths, summary.config, embedder)
        card = paths[README_FILE].read_text(encoding="utf-8") if README_FILE in paths else None
        meta = meta.with_card(card)
        prepared = Prepared(summary, analysis, card, embedder, derived_from)
        for attempt in range(3):
            try:
                return _publish_once(sessions, store, principal, namespace, name, files, meta, prepared)
            except IntegrityError:
                # Another publish created the same adapter or number first: try again on fresh rows.
                if attempt == 2:
                    raise Conflict(f"{namespace}/{name} is being published concurrently; retry") from None
        raise AssertionError("unreachable")
    finally:
        store.discard(files.values())


def _publish_once(
    sessions: sessionmaker[Session],
    store: BlobStore,
    principal: Principal,
    namespace: str,
    name: str,
    files: dict[str, StagedFile],
    meta: AdapterMeta,
    prepared: Prepared,
) -> Version:
    summary, analysis = prepared.summary, prepared.analysis
    with writing(sessions) as session:
        ns = require_write(session, principal, namespace)
        adapter = find_adapter(session, namespace, name, lock=True)
        if adapter is None:
            now = utcnow()
            adapter = Adapter(
                created_at=now,
                updated_at=now,
                namespace_id=ns.id,
                name=name,
                base_model=summary.base_model,
                tags=[],
                description="",
                visibility="public",
                last_version=0,
            )
            session.add(adapter)
        meta.apply(adapter)
        adapter.base_model = summary.base_model
        adapter.last_version += 1
        session.flush()

        _insert_blobs(session, files.values())
        version = Version(
            adapter_id=adapter.id,
            number=adapter.last_version,
            revision=revision_id(f"{namespace}/{name}", adapter.last_version, files),
            adapter_config=summary.config,
            base_model=summary.base_model,
            rank=summary.rank,
            alpha=summary.alpha,
            target_modules=summary.target_modules,
            num_parameters=summary.num_parameters,
            total_size=sum(f.size for f in files.values()),
            published_by_id=principal.user_id,
            derived_from=prepared.derived_from,
            files=[File(path=p, sha256=f.sha256, size=f.size) for p, f in sorted(files.items())],
            prototypes=[
                Prototype(module=p.module, in_features=len(p.vector), sigma=p.sigma, vector=to_bytes(p.vector))
                for p in analysis.prototypes
            ],
            embeddings=[Embedding(kind="sketch", dim=len(analysis.sketch), vector=to_bytes(analysis.sketch))]
            + (
                [Embedding(kind="examples", dim=len(analysis.examples), vector=to_bytes(analysis.examples))]
                if analysis.examples is not None
                else []
            ),
        )
        adapter.text_embedding = text_embedding(prepared.embedder, adapter, prepared.card)
        session.add(version)
        session.flush()
        record_change(session, adapter.id)
        for staged in files.values():
            store.install(staged)
        session.commit()
        session.refresh(version)
        _ = version.adapter.namespace, version.published_by
        return version


def _insert_blobs(session: Session, staged: Iterable[StagedFile]) -> None:
    rows = [{"sha256": f.sha256, "size": f.size, "created_at": utcnow()} for f in staged]
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
    session.execute(insert(Blob).values(rows).on_conflict_do_nothing(index_elements=["sha256"]))


def update_adapter(
    sessions: sessionmaker[Session],
    store: BlobStore,
    embedder: TextEmbedder,
    principal: Principal,
    namespace: str,
    name: str,
    meta: AdapterMeta,
) -> Adapter:
    meta.check()
    with writing(sessions) as session:
        require_write(session, principal, namespace)
        adapter = get_adapter(session, principal, namespace, name)
        meta.apply(adapter)
        card = version_card(store, adapter.versions[-1] if adapter.versions else None)
        adapter.text_embedding = text_embedding(embedder, adapter, card)
        record_change(session, adapter.id)
        session.commit()
        session.refresh(adapter)
        return adapter


def delete_adapter(
    sessions: sessionmaker[Session],
    store: BlobStore,
    principal: Principal,
    namespace: str,
    name: str,
    rev: str | None = None,
) -> list[VersionIdentity]:
    """Delete one version (rev given) or the whole adapter; blobs nothing references any more go too."""
    with writing(sessions) as session:
        require_write(session, principal, namespace)
        adapter = get_adapter(session, principal, namespace, name)
        doomed = [get_version(session, adapter, rev)] if rev is not None else list(adapter.versions)
        shas = {f.sha256 for v in doomed for f in v.files}
        deleted = [VersionIdentity.of(v) for v in doomed]
        record_change(session, adapter.id)
        if rev is None:
            session.delete(adapter)
        else:
            session.delete(doomed[0])
        session.commit()
    purge_blobs(sessions, store, shas)
    return deleted


def create_adapter(
    sessions: sessionmaker[Session], principal: Principal, namespace: str, name: str, visibility: str = "public"
) -> tuple[Adapter, bool]:
    """Create an adapter with no version yet (what `create_repo` asks for); (adapter, created)."""
    check_repo_id(namespace, name)
    AdapterMeta(visibility=visibility).check()
    with writing(sessions) as session:
        ns = require_write(session, principal, namespace)
        existing = find_adapter(session, namespace, name)
        if existing is not None:
            return existing, False
        now = utcnow()
        adapter = Adapter(
            namespace_id=ns.id,
            name=name,
            base_model="",
            tags=[],
            description="",
            visibility=visibility,
            last_version=0,
            created_at=now,
            updated_at=now,
        )
        session.add(adapter)
        session.flush()
        record_change(session, adapter.id)
        session.commit()
        session.refresh(adapter)
        _ = adapter.namespace
        return adapter, True
