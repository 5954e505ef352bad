"""Lineage: the hub versions (by id and revision) and local members an adapter says it derives from,
checked as readable by the publisher."""

from __future__ import annotations

import math
from dataclasses import asdict

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.accounts.access import Principal
from quiver_hub.registry.catalogue.reads import VersionIdentity, get_adapter, get_version, may_see
from quiver_hub.registry.errors import InvalidRequest
from quiver_hub.registry.limits import MAX_LINEAGE
from quiver_hub.registry.models import Version


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


def derived_from_this(session: Session, principal: Principal, repo_id: str) -> list[str]:
    """The adapters the caller may see whose lineage (of one of their latest 1,000 derived versions) names
    this one."""
    rows = session.scalars(select(Version).where(Version.derived_from.is_not(None)).limit(1000))
    found = set()
    for v in rows:  # (a JSON null is not SQL NULL: some rows hold no lineage)
        lineage = v.derived_from or {}
        named = any(m.get("id") == repo_id and not m.get("local") for m in lineage.get("versions", []))
        if named and may_see(session, principal, v.adapter.repo_id):
            found.add(v.adapter.repo_id)
    return sorted(found)
