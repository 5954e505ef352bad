"""Changing what is published: edit an adapter's fields, move it to another name, delete adapters and versions."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.accounts import audit
from quiver_hub.registry.accounts.access import Principal, require_write
from quiver_hub.registry.catalogue.change_feed import record_change
from quiver_hub.registry.catalogue.metadata import AdapterMeta, embed_ahead, text_embedding, version_card
from quiver_hub.registry.catalogue.names import check_repo_id
from quiver_hub.registry.catalogue.reads import VersionIdentity, find_adapter, get_adapter, get_version
from quiver_hub.registry.catalogue.shapes import check_module_shapes, stored_shapes
from quiver_hub.registry.db import upsert, writing
from quiver_hub.registry.errors import Conflict, InvalidRequest
from quiver_hub.registry.models import AdapterRepo, RetiredName, utcnow
from quiver_hub.registry.search.embedder import TextEmbedder
from quiver_hub.registry.storage.blobs import BlobStore
from quiver_hub.registry.storage.gc import purge_blobs

log = logging.getLogger("quiver.registry")


def update_adapter(
    sessions: sessionmaker[Session],
    store: BlobStore,
    embedder: TextEmbedder,
    principal: Principal,
    namespace: str,
    name: str,
    meta: AdapterMeta,
) -> AdapterRepo:
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
) -> AdapterRepo:
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


def retire_name(session: Session, adapter: AdapterRepo, moved_to: int | None = None) -> None:
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
