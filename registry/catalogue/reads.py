"""Reading the registry: adapters and versions as a given principal may see them.

An adapter the caller may not see is reported exactly like one that does not exist.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from quiver_hub.registry.accounts.access import Principal, can_read
from quiver_hub.registry.catalogue.names import check_repo_id
from quiver_hub.registry.errors import InvalidRequest, NotFound
from quiver_hub.registry.limits import MAX_DB_ID, MAX_PAGE
from quiver_hub.registry.models import AdapterRepo, Namespace, RetiredName, Tag, Version

REVISION_RE = re.compile(r"[0-9a-f]{40}")
TAG_RE = re.compile(r"[\w.\-]{1,128}", re.ASCII)


@dataclass(frozen=True)
class VersionIdentity:
    """How every answer names a version: {"id": "ns/name", "version": 3, "revision": "<40 hex>"}."""

    id: str
    version: int
    revision: str

    @classmethod
    def of(cls, v: Version) -> VersionIdentity:
        return cls(id=v.adapter.repo_id, version=v.number, revision=v.revision)


def find_adapter(session: Session, namespace: str, name: str, *, lock: bool = False) -> AdapterRepo | None:
    check_repo_id(namespace, name)
    query = select(AdapterRepo).join(Namespace).where(Namespace.name == namespace, AdapterRepo.name == name)
    if lock:
        query = query.with_for_update(of=AdapterRepo)
    return session.scalar(query)


def find_namespace(session: Session, name: str) -> Namespace | None:
    """A user or organisation by name (names are public), or None."""
    return session.scalar(select(Namespace).where(Namespace.name == name))


def get_adapter(session: Session, principal: Principal, namespace: str, name: str) -> AdapterRepo:
    adapter = find_adapter(session, namespace, name)
    if adapter is None or not can_read(principal, adapter.namespace_id, adapter.visibility):
        moved = moved_to(session, principal, namespace, name) if adapter is None else None
        raise NotFound(f"adapter {namespace}/{name} not found", moved_to=moved)
    return adapter


def may_see(session: Session, principal: Principal, repo_id: str) -> bool:
    """Whether the caller may see the adapter `namespace/name` (False for one that does not exist)."""
    namespace, _, name = repo_id.partition("/")
    try:
        get_adapter(session, principal, namespace, name)
    except (NotFound, InvalidRequest):
        return False
    return True


def moved_to(session: Session, principal: Principal, namespace: str, name: str) -> str | None:
    """The repo id an adapter moved away from namespace/name now has, when the caller may see it."""
    target = session.scalar(
        select(AdapterRepo)
        .join(RetiredName, RetiredName.moved_to == AdapterRepo.id)
        .join(Namespace, Namespace.id == RetiredName.namespace_id)
        .where(Namespace.name == namespace, RetiredName.name == name)
    )
    if target is None or not can_read(principal, target.namespace_id, target.visibility):
        return None
    return target.repo_id


def get_version(session: Session, adapter: AdapterRepo, rev: str) -> Version:
    """rev: "latest" (or "main"), a version number, a 40-hex revision id, or a tag."""
    query = select(Version).where(Version.adapter_id == adapter.id)
    if rev in ("latest", "main"):
        query = query.order_by(Version.number.desc()).limit(1)
    elif rev.isascii() and rev.isdigit():
        if len(rev) >= 10:  # tags are never all digits, so this can only be a number, and too large for one
            raise InvalidRequest(f"version number {rev[:100]} is out of range")
        query = query.where(Version.number == int(rev))
    elif REVISION_RE.fullmatch(rev):
        query = query.where(Version.revision == rev)
    elif TAG_RE.fullmatch(rev):
        query = query.join(Tag, Tag.version_id == Version.id).where(Tag.adapter_id == adapter.id, Tag.name == rev)
    else:
        raise InvalidRequest(f"revision {rev[:100]!r} is not 'latest', a version number, a 40-hex revision id or a tag")
    version = session.scalar(query)
    if version is None:
        raise NotFound(f"adapter {adapter.repo_id} has no version {rev}", code="revision_not_found")
    return version


def latest_versions(session: Session, adapters: list[AdapterRepo]) -> dict[int, Version]:
    """The newest version of each adapter, in one query."""
    if not adapters:
        return {}
    ids = [a.id for a in adapters]
    newest = (
        select(Version.adapter_id, func.max(Version.number).label("number"))
        .where(Version.adapter_id.in_(ids))
        .group_by(Version.adapter_id)
        .subquery()
    )
    rows = session.scalars(
        select(Version).join(newest, (Version.adapter_id == newest.c.adapter_id) & (Version.number == newest.c.number))
    )
    return {v.adapter_id: v for v in rows}


@dataclass(frozen=True)
class AdapterFilter:
    base_model: str | None = None
    task: str | None = None
    tags: tuple[str, ...] = ()  # all of them
    namespace: str | None = None
    search: str | None = None  # a case-insensitive substring of "namespace/name"


def visible(principal: Principal, query: Select) -> Select:
    """Restrict a query over AdapterRepo rows to what the principal may see (inside the SQL, not after)."""
    return query.where(
        or_(AdapterRepo.visibility == "public", AdapterRepo.namespace_id.in_(sorted(principal.namespace_ids)))
    )


def visible_versions(session: Session, principal: Principal, version_ids: set[int]) -> set[int]:
    """Those of `version_ids` that exist and that the principal may see, as the database says now."""
    ids, seen = sorted(version_ids), set[int]()
    for start in range(0, len(ids), 5000):  # bounded IN lists (SQLite's variables, Postgres' plans)
        query = select(Version.id).join(AdapterRepo, AdapterRepo.id == Version.adapter_id)
        seen.update(session.scalars(visible(principal, query).where(Version.id.in_(ids[start : start + 5000]))))
    return seen


def descriptions(session: Session, adapter_ids: list[int]) -> dict[int, str]:
    """adapter id -> its description, for results already checked as visible."""
    if not adapter_ids:
        return {}
    rows = session.execute(
        select(AdapterRepo.id, AdapterRepo.description).where(AdapterRepo.id.in_(sorted(set(adapter_ids))))
    )
    return {i: d or "" for i, d in rows}


def recent_adapters(session: Session, principal: Principal, limit: int = 10) -> list[AdapterRepo]:
    """The most recently updated adapters the caller may see."""
    query = visible(principal, select(AdapterRepo).join(Namespace)).order_by(
        AdapterRepo.updated_at.desc(), AdapterRepo.id.desc()
    )
    return list(session.scalars(query.limit(limit)))


def base_model_counts(session: Session, principal: Principal, limit: int = 20) -> list[tuple[str, int]]:
    """(base model, how many adapters the caller may see of it), most first."""
    count = func.count(AdapterRepo.id)
    query = visible(principal, select(AdapterRepo.base_model, count).join(Namespace)).where(
        AdapterRepo.base_model != ""
    )
    rows = session.execute(
        query.group_by(AdapterRepo.base_model).order_by(count.desc(), AdapterRepo.base_model).limit(limit)
    )
    return [(base, n) for base, n in rows]


def list_adapters(
    session: Session, principal: Principal, filters: AdapterFilter, cursor: str | None, limit: int
) -> tuple[list[AdapterRepo], str | None]:
    """A page of adapters in creation order, and the cursor of the next page (None at the end)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}")
    query = visible(principal, select(AdapterRepo).join(Namespace))
    if filters.base_model:
        query = query.where(AdapterRepo.base_model == filters.base_model)
    if filters.task:
        query = query.where(AdapterRepo.task == filters.task)
    if filters.namespace:
        query = query.where(Namespace.name == filters.namespace)
    if filters.search:
        query = query.where(func.lower(Namespace.name + "/" + AdapterRepo.name).contains(filters.search.lower()))
    if cursor:
        query = query.where(AdapterRepo.id > decode_cursor(cursor))
    query = query.order_by(AdapterRepo.id)
    if not filters.tags:
        rows = list(session.scalars(query.limit(limit + 1)))
    else:
        # Tags are a JSON list; filter portably in Python while paging through the ordered rows.
        rows = []
        for adapter in session.scalars(query.execution_options(yield_per=500)):
            if all(t in (adapter.tags or []) for t in filters.tags):
                rows.append(adapter)
                if len(rows) > limit:
                    break
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].id) if len(rows) > limit else None
    return page, next_cursor


def encode_cursor(adapter_id: int) -> str:
    return base64.urlsafe_b64encode(f"a:{adapter_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, value = raw.split(":", 1)
        if kind != "a" or not (value.isascii() and value.isdigit()) or not 0 <= int(value) <= MAX_DB_ID:
            raise ValueError
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("cursor is not valid; pass the next_cursor of a previous page") from None
