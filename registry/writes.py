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
import logging
import math
from dataclasses import asdict, dataclass, field, replace

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry import audit, base_models, lora
from quiver_hub.registry.accounts import Principal, require_write
from quiver_hub.registry.analysis import VersionAnalysis, analyse_version, describe
from quiver_hub.registry.blobs import BlobStore, StagedFile
from quiver_hub.registry.cards import card_fields
from quiver_hub.registry.change_feed import record_change
from quiver_hub.registry.db import writing
from quiver_hub.registry.embedder import TextEmbedder
from quiver_hub.registry.errors import Conflict, InvalidAdapter, InvalidRequest
from quiver_hub.registry.files import README_FILE, git_oid
from quiver_hub.registry.gc import purge_blobs
from quiver_hub.registry.limits import (
    MAX_DESCRIPTION_CHARS,
    MAX_LICENSE_CHARS,
    MAX_LINEAGE,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TASK_CHARS,
)
from quiver_hub.registry.models import (
    Adapter,
    BaseModelModule,
    Blob,
    Embedding,
    File,
    Prototype,
    RetiredName,
    Version,
    utcnow,
)
from quiver_hub.registry.names import check_repo_id
from quiver_hub.registry.reads import VersionIdentity, find_adapter, get_adapter, get_version
from quiver_hub.registry.safetensors_header import read_header
from quiver_hub.registry.validation import AdapterSummary, factor_shapes, validate_adapter
from quiver_hub.registry.vectors import to_bytes

log = logging.getLogger("quiver.registry")
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

    def apply(self, adapter: Adapter) -> None:
        for attr in ("description", "task", "tags", "license", "visibility"):
            value = getattr(self, attr)
            if value is not None:
                setattr(adapter, attr, value)
        adapter.updated_at = utcnow()


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


def adapter_text(description: str | None, task: str | None, tags: list[str] | None, card: str | None) -> str:
    """What text search embeds for an adapter."""
    return describe(description or "", task, tags or [], card)


def text_embedding(
    embedder: TextEmbedder, adapter: Adapter, card: str | None, known: tuple[str, bytes] | None = None
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
        fields = [
            getattr(meta, f) if getattr(meta, f) is not None else getattr(current, f, None)
            for f in ("description", "task", "tags")
        ]
        if store is not None and current is not None and current.versions:
            card = version_card(store, current.versions[-1])
    text = adapter_text(*fields, card)
    return text, to_bytes(embedder.embed_one(text))


def version_card(store: BlobStore, version: Version | None) -> str | None:
    """The model card (README.md) of a stored version, if it has one."""
    readme = version.file(README_FILE) if version else None
    return store.local_path(readme.sha256).read_text(encoding="utf-8") if readme else None


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


def upsert(session: Session):  # noqa: ANN201
    """The dialect's INSERT, which has ON CONFLICT."""
    return {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[session.get_bind().dialect.name]


def hold_blobs(session: Session, store: BlobStore, files: dict[str, StagedFile]) -> None:
    """Make sure the blob row of every file exists, and hold those rows (FOR UPDATE) until the commit, so
    a concurrent purge (registry.gc) waits for this publish and then sees its references. A file reused
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


def check_module_shapes(session: Session, base_model: str, shapes: dict[str, tuple[int, int]], record: bool) -> None:
    """Check an adapter's module shapes against those its base model's public adapters agree on, and with
    `record` (a public adapter) record its new ones. Only public adapters' shapes are recorded, so the
    check tells nobody anything about a private adapter; a private one is checked again when made public."""
    known = {
        row.module: (row.in_features, row.out_features)
        for row in session.scalars(
            select(BaseModelModule).where(
                BaseModelModule.base_model == base_model, BaseModelModule.module.in_(sorted(shapes))
            )
        )
    }
    for module, shape in sorted(shapes.items()):
        if module in known and known[module] != shape:
            (i, o), (ki, ko) = shape, known[module]
            raise InvalidAdapter(
                f"{module} is {i} -> {o} in this adapter, but {ki} -> {ko} in the public adapters of {base_model}: "
                "is the base model right? (set it with the base_model field or the card's base_model:)"
            )
    new = [
        {"base_model": base_model, "module": m, "in_features": s[0], "out_features": s[1]}
        for m, s in shapes.items()
        if m not in known
    ]
    if new and record:
        session.execute(upsert(session)(BaseModelModule).values(new).on_conflict_do_nothing())


def check_lineage(sessions: sessionmaker[Session], principal: Principal, lineage: object) -> dict:
    """A declared lineage ({"method", "rank"?, "versions": [{"id", "revision", "weight"?} or a local
    {"id", "weight", "local": true}]}), with every named version checked to exist and be visible to the
    publisher, and its number filled in. Nothing else is kept."""
    if not isinstance(lineage, dict) or not isinstance(lineage.get("versions"), list):
        raise InvalidRequest('derived_from must be {"method": ..., "versions": [{"id", "revision", "weight"}]}')
    members = lineage["versions"]
    if not 1 <= len(members) <= MAX_LINEAGE:
        raise InvalidRequest(f"derived_from names 1 to {MAX_LINEAGE} versions")
    method = lineage.get("method")
    if not isinstance(method, str) or not 0 < len(method) <= 64:
        raise InvalidRequest("derived_from.method must be a short string")
    rank = lineage.get("rank")
    if rank is not None and (type(rank) is not int or rank < 1):
        raise InvalidRequest("derived_from.rank must be a positive integer")
    out = []
    with sessions() as session:
        for m in members:
            if not isinstance(m, dict) or not isinstance(m.get("id"), str) or len(m["id"]) > 200:
                raise InvalidRequest("each derived_from version needs an id")
            weight = m.get("weight")
            if weight is not None and not (isinstance(weight, int | float) and math.isfinite(weight)):
                raise InvalidRequest("derived_from weights must be finite numbers")
            if m.get("local"):  # an adapter that is not on the hub: it names none (every repo id has a '/')
                if "/" in m["id"]:
                    raise InvalidRequest(
                        f"derived_from: {m['id']!r} is marked local but reads as a repo id; name an adapter on "
                        "the hub by its id and revision, and a local one by a name without '/'"
                    )
                out.append({"id": m["id"], "weight": weight, "local": True})
                continue
            namespace, _, name = m["id"].partition("/")
            revision = m.get("revision")
            if not isinstance(revision, str):
                raise InvalidRequest(f"derived_from: {m['id']} needs its revision")
            version = get_version(session, get_adapter(session, principal, namespace, name), revision)
            out.append({**asdict(VersionIdentity.of(version)), "weight": weight})
    return {"method": method, "rank": rank, "versions": out}


def stored_shapes(store: BlobStore, version: Version) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) per module of a stored version, from its weights' header."""
    weights = store.local_path(version.file(lora.WEIGHTS_FILE).sha256)
    with weights.open("rb") as f:
        tensors, _ = read_header(f, weights.stat().st_size, lora.WEIGHTS_FILE)
    return factor_shapes(tensors, version.adapter_config)


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
    if meta.base_model is not None:
        raise InvalidRequest("a version's base model is fixed; publish a new version with base_model to change it")
    described = embed_ahead(sessions, embedder, namespace, name, meta, store=store)
    with writing(sessions) as session:
        require_write(session, principal, namespace)
        adapter = get_adapter(session, principal, namespace, name)
        if meta.visibility == "public" and adapter.visibility != "public" and adapter.versions:
            latest = adapter.versions[-1]
            check_module_shapes(session, latest.base_model, stored_shapes(store, latest), record=True)
        changed = sorted(
            f
            for f in ("description", "task", "tags", "license", "visibility")
            if getattr(meta, f) is not None and getattr(meta, f) != getattr(adapter, f)
        )
        action = "visibility" if "visibility" in changed else "edit"
        audit.record(
            session,
            principal,
            action,
            adapter.namespace,
            adapter.repo_id,
            changed=changed,
            **({"visibility": meta.visibility} if action == "visibility" else {}),
        )
        meta.apply(adapter)
        card = version_card(store, adapter.versions[-1] if adapter.versions else None)
        adapter.text_embedding = text_embedding(embedder, adapter, card, described)
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
        target = adapter.repo_id + (f"@{deleted[0].version}" if rev is not None else "")
        audit.record(session, principal, "delete", adapter.namespace, target, versions=[d.version for d in deleted])
        if rev is None:
            retire_name(session, adapter)
            session.delete(adapter)
        else:
            session.delete(doomed[0])
        session.commit()
    try:
        purge_blobs(sessions, store, shas)
    except Exception:  # noqa: BLE001 - the delete is done; what is left is garbage `quiver gc` removes
        log.exception("could not remove the blobs of %s/%s; quiver gc will", namespace, name)
    return deleted


def move_adapter(
    sessions: sessionmaker[Session], principal: Principal, source: tuple[str, str], target: tuple[str, str]
) -> Adapter:
    """Rename an adapter (within the namespaces the caller may write). Versions keep their numbers and
    revision ids; the old name is retired and points at the adapter, so reads of it can redirect. A
    name that ever held versions cannot be moved onto: its numbers must keep meaning what they meant."""
    check_repo_id(*source)
    check_repo_id(*target)
    with writing(sessions) as session:
        require_write(session, principal, source[0])
        ns = require_write(session, principal, target[0])
        adapter = get_adapter(session, principal, *source)
        if find_adapter(session, *target) is not None:
            raise Conflict(f"{target[0]}/{target[1]} already exists")
        retired = session.get(RetiredName, (ns.id, target[1]))
        if retired is not None and retired.last_version > 0:
            raise Conflict(
                f"{target[0]}/{target[1]} held versions of another adapter, whose numbers stay theirs; choose "
                "another name"
            )
        if retired is not None:
            session.delete(retired)
        audit.record(session, principal, "move", adapter.namespace, adapter.repo_id, to=f"{target[0]}/{target[1]}")
        retire_name(session, adapter, moved_to=adapter.id)
        adapter.namespace_id, adapter.name, adapter.updated_at = ns.id, target[1], utcnow()
        record_change(session, adapter.id)
        session.commit()
        session.refresh(adapter)
        _ = adapter.namespace
        return adapter


def retire_name(session: Session, adapter: Adapter, moved_to: int | None = None) -> None:
    """Remember the name's last version number, so a new adapter of that name continues after it."""
    session.execute(
        upsert(session)(RetiredName)
        .values(
            namespace_id=adapter.namespace_id,
            name=adapter.name,
            last_version=adapter.last_version,
            moved_to=moved_to,
            retired_at=utcnow(),
        )
        .on_conflict_do_update(
            index_elements=["namespace_id", "name"],
            set_={"last_version": adapter.last_version, "moved_to": moved_to, "retired_at": utcnow()},
        )
    )


def new_adapter(session: Session, namespace_id: int, name: str, base_model: str, visibility: str) -> Adapter:
    """A new adapter row; its numbers continue after those a deleted adapter of that name gave."""
    retired = session.get(RetiredName, (namespace_id, name))
    now = utcnow()
    adapter = Adapter(
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
) -> tuple[Adapter, bool]:
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
