"""Tags: names for versions (`v1.0`), usable wherever a revision is (reads.get_version). A tag names one
version for ever unless deleted; versions are linear, so there are no branches to tag."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.accounts import audit
from quiver_hub.registry.accounts.access import Principal, require_write
from quiver_hub.registry.catalogue.change_feed import record_change
from quiver_hub.registry.catalogue.reads import REVISION_RE, TAG_RE, get_adapter, get_version
from quiver_hub.registry.db import writing
from quiver_hub.registry.errors import Conflict, InvalidName, NotFound
from quiver_hub.registry.models import AdapterRepo, Tag

RESERVED = ("main", "latest")


def check_tag_name(name: str) -> str:
    """1 to 128 of letters, digits, '.', '-', '_'; not a version number, a revision id, main or latest
    (which would make a revision string mean two things)."""
    if not TAG_RE.fullmatch(name or "") or name.startswith(("-", ".")):
        raise InvalidName(f"tag {name[:100]!r} is not valid: use 1 to 128 letters, digits, '.', '-' or '_'")
    if name in RESERVED or name.isdigit() or REVISION_RE.fullmatch(name):
        raise InvalidName(f"tag {name!r} would read as a revision: main, latest, numbers and 40-hex ids are taken")
    return name


def list_tags(session: Session, adapter: AdapterRepo) -> list[Tag]:
    return list(session.scalars(select(Tag).where(Tag.adapter_id == adapter.id).order_by(Tag.name)))


def create_tag(
    sessions: sessionmaker[Session],
    principal: Principal,
    namespace: str,
    name: str,
    tag: str,
    revision: str = "latest",
    message: str = "",
) -> Tag:
    check_tag_name(tag)
    with writing(sessions) as session:
        require_write(session, principal, namespace)
        adapter = get_adapter(session, principal, namespace, name)
        version = get_version(session, adapter, revision)
        if session.scalar(select(Tag).where(Tag.adapter_id == adapter.id, Tag.name == tag)) is not None:
            raise Conflict(f"tag {tag!r} already exists in {adapter.repo_id}; delete it first to move it")
        row = Tag(adapter_id=adapter.id, version_id=version.id, name=tag, message=message[:10_000])
        session.add(row)
        record_change(session, adapter.id)
        audit.record(
            session, principal, "tag.create", adapter.namespace, adapter.repo_id, tag=tag, version=version.number
        )
        try:
            session.commit()
        except IntegrityError:  # created concurrently
            raise Conflict(f"tag {tag!r} already exists in {adapter.repo_id}") from None
        session.refresh(row)
        _ = row.version.adapter.namespace  # loaded for the answer, which is made after the session ends
        return row


def delete_tag(sessions: sessionmaker[Session], principal: Principal, namespace: str, name: str, tag: str) -> None:
    with writing(sessions) as session:
        require_write(session, principal, namespace)
        adapter = get_adapter(session, principal, namespace, name)
        row = session.scalar(select(Tag).where(Tag.adapter_id == adapter.id, Tag.name == tag))
        if row is None:
            raise NotFound(f"tag {tag!r} not found in {adapter.repo_id}", code="revision_not_found")
        session.delete(row)
        record_change(session, adapter.id)
        audit.record(session, principal, "tag.delete", adapter.namespace, adapter.repo_id, tag=tag)
        session.commit()
