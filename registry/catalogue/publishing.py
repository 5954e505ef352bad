"""Publishing a version.

Publishing order, so that a crash at any point leaves no half-visible version:
1. the hub stages every uploaded file in the blob store's tmp/ (hashed, fsynced);
2. the files are validated (nothing is stored on failure; staged files are discarded);
3. in one transaction: adapter row (locked), version, blobs and files are written and flushed,
   the staged files are renamed to their content addresses, and the transaction commits last.
A crash before the commit leaves at most unreferenced blobs, which `quiver gc` removes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.accounts import audit
from quiver_hub.registry.accounts.access import Principal, require_write
from quiver_hub.registry.catalogue import base_models
from quiver_hub.registry.catalogue.cards import card_fields
from quiver_hub.registry.catalogue.change_feed import record_change
from quiver_hub.registry.catalogue.files import README_FILE, git_oid
from quiver_hub.registry.catalogue.metadata import AdapterMeta, embed_ahead, text_embedding
from quiver_hub.registry.catalogue.names import check_repo_id
from quiver_hub.registry.catalogue.reads import find_adapter
from quiver_hub.registry.catalogue.shapes import check_module_shapes
from quiver_hub.registry.db import upsert, writing
from quiver_hub.registry.errors import Conflict
from quiver_hub.registry.intake.analysis import VersionAnalysis, analyse_version
from quiver_hub.registry.intake.validation import AdapterSummary, validate_adapter
from quiver_hub.registry.memory import release_freed_memory
from quiver_hub.registry.models import AdapterRepo, Blob, Embedding, File, Prototype, RetiredName, Version, utcnow
from quiver_hub.registry.search.embedder import TextEmbedder
from quiver_hub.registry.search.vectors import to_bytes
from quiver_hub.registry.storage.blobs import BlobStore, StagedFile


@dataclass(frozen=True)
class Prepared:
    """What a publish computes before it takes any lock."""

    summary: AdapterSummary
    analysis: VersionAnalysis
    card: str | None
    embedder: TextEmbedder
    derived_from: dict | None = None
    title: str = ""  # the commit's, as Hugging Face clients list it
    message: str = ""
    oids: dict[str, str] = field(default_factory=dict)  # path -> git object id (files.git_oid)
    described: tuple[str, bytes] | None = None  # the adapter's text and its embedding, as read before the lock


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
    title: str = "",
    message: str = "",
) -> Version:
    """Publish staged files as the next version of namespace/name. Consumes the staged files.

    The version's analysis (prototypes, sketch, embeddings) is computed first and committed with it:
    a version is never visible without its embeddings.
    """
    try:
        check_repo_id(namespace, name)
        meta.check()
        refuse_lost(store, files)  # checked again, under the blobs' locks, when the version is written
        paths = {path: f.path for path, f in files.items()}
        try:
            summary = validate_adapter(paths)
            card = paths[README_FILE].read_text(encoding="utf-8") if README_FILE in paths else None
            given = meta.base_model
            meta = meta.with_card(card)
            base_model, notices = base_models.choose(given, card_fields(card).get("base_model"), summary.base_model)
            meta, summary = replace(meta, base_model=base_model), replace(summary, base_model=base_model)
            with sessions() as session:
                notices += base_models.new_name_notice(session, base_model)
            analysis = analyse_version(paths, summary.config, embedder)
            oids = {path: git_oid(path, f.sha256, f.size, lambda f=f: f.path) for path, f in files.items()}
        except FileNotFoundError:  # a reused file purged by a delete (or a cache) while it was being read
            refuse_lost(store, files)
            raise Conflict(f"a file {namespace}/{name} reuses went away while it was read; retry") from None
        described = embed_ahead(sessions, embedder, namespace, name, meta, card)
        prepared = Prepared(
            summary, analysis, card, embedder, derived_from, title[:255], message[:10_000], oids, described
        )
        for attempt in range(3):
            try:
                version = _publish_once(sessions, store, principal, namespace, name, files, meta, prepared)
                version.notices = notices  # for the answer (hub.schemas.version_out)
                return version
            except IntegrityError:
                # Another publish created the same adapter or number first: try again on fresh rows.
                if attempt == 2:
                    raise Conflict(f"{namespace}/{name} is being published concurrently; retry") from None
        raise AssertionError("unreachable")
    finally:
        store.discard(files.values())
        release_freed_memory()  # the analysis's copies of the factors, out of the hub's resident memory


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
            adapter = new_adapter(session, ns.id, name, summary.base_model, "public")
        meta.apply(adapter)
        adapter.base_model = summary.base_model
        adapter.last_version += 1
        session.flush()
        check_module_shapes(session, summary.base_model, summary.shapes, record=adapter.visibility == "public")

        hold_blobs(session, store, files)
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
            title=prepared.title or f"Publish version {adapter.last_version}",
            message=prepared.message,
            files=[File(path=p, sha256=f.sha256, size=f.size, oid=prepared.oids[p]) for p, f in sorted(files.items())],
            prototypes=[
                Prototype(module=p.module, in_features=len(p.vector), sigma=p.sigma, vector=to_bytes(p.vector))
                for p in analysis.prototypes
            ],
            embeddings=[
                Embedding(kind="sketch", dim=len(analysis.sketch), vector=to_bytes(analysis.sketch)),
                Embedding(kind="outputs", dim=len(analysis.outputs), vector=to_bytes(analysis.outputs)),
            ]
            + (
                [Embedding(kind="examples", dim=len(analysis.examples), vector=to_bytes(analysis.examples))]
                if analysis.examples is not None
                else []
            ),
        )
        adapter.text_embedding = text_embedding(prepared.embedder, adapter, prepared.card, prepared.described)
        session.add(version)
        session.flush()
        record_change(session, adapter.id)
        audit.record(
            session, principal, "publish", ns, f"{namespace}/{name}", version=version.number, revision=version.revision
        )
        for staged in files.values():
            store.install(staged)
        session.commit()  # last: the version is visible only now, with every blob in place
        session.refresh(version)
        _ = version.adapter.namespace, version.published_by
        return version


def hold_blobs(session: Session, store: BlobStore, files: dict[str, StagedFile]) -> None:
    """Make sure the blob row of every file exists, and hold those rows (FOR UPDATE) until the commit, so
    a concurrent purge (registry.storage.gc) waits for this publish and then sees its references. A file reused
    from an earlier version (a Hugging Face commit keeps its parent's files) must still have its content:
    a delete that won the race removed it, and the publish is refused rather than stored without bytes."""
    rows = [{"sha256": f.sha256, "size": f.size, "created_at": utcnow()} for f in files.values()]
    session.execute(upsert(session)(Blob).values(rows).on_conflict_do_nothing(index_elements=["sha256"]))
    shas = sorted({f.sha256 for f in files.values()})
    session.execute(select(Blob.sha256).where(Blob.sha256.in_(shas)).order_by(Blob.sha256).with_for_update())
    refuse_lost(store, files)


def refuse_lost(store: BlobStore, files: dict[str, StagedFile]) -> None:
    """Conflict when a file reused from an earlier version has lost its content to a delete."""
    gone = sorted(path for path, f in files.items() if f.stored and not store.exists(f.sha256))
    if gone:
        raise Conflict(
            f"{', '.join(gone)}: the version these files came from was deleted while this commit was made; "
            "upload them again"
        )


def new_adapter(session: Session, namespace_id: int, name: str, base_model: str, visibility: str) -> AdapterRepo:
    """A new adapter row; its numbers continue after those a deleted adapter of that name gave."""
    retired = session.get(RetiredName, (namespace_id, name))
    now = utcnow()
    adapter = AdapterRepo(
        namespace_id=namespace_id,
        name=name,
        base_model=base_model,
        tags=[],
        description="",
        visibility=visibility,
        last_version=retired.last_version if retired else 0,
        created_at=now,
        updated_at=now,
    )
    session.add(adapter)
    return adapter


def create_adapter(
    sessions: sessionmaker[Session], principal: Principal, namespace: str, name: str, visibility: str = "public"
) -> tuple[AdapterRepo, bool]:
    """Create an adapter with no version yet (what `create_repo` asks for); (adapter, created)."""
    check_repo_id(namespace, name)
    AdapterMeta(visibility=visibility).check()
    with writing(sessions) as session:
        ns = require_write(session, principal, namespace)
        existing = find_adapter(session, namespace, name)
        if existing is not None:
            return existing, False
        adapter = new_adapter(session, ns.id, name, "", visibility)
        session.flush()
        audit.record(session, principal, "create", ns, f"{namespace}/{name}", visibility=visibility)
        record_change(session, adapter.id)
        session.commit()
        session.refresh(adapter)
        _ = adapter.namespace
        return adapter, True
