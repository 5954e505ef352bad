"""The audit log: every write, recorded in the same transaction as the change (so a write that fails
leaves no event, and one that succeeds leaves exactly one): who, what, when, from which address.

A user reads the events of their own namespace, an organisation's admins those of the organisation, and
operators (`quiver audit` on the hub's database) all of them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from quiver_hub.registry.accounts.access import ROLE_ALLOWS, Principal
from quiver_hub.registry.errors import Forbidden, InvalidRequest
from quiver_hub.registry.limits import MAX_DB_ID, MAX_EVENTS
from quiver_hub.registry.models import AuditEvent, Namespace

OPERATOR = "operator"  # the actor of `quiver admin` commands, which run on the database itself


def record(
    session: Session, principal: Principal | None, action: str, namespace: Namespace, target: str, **details: Any
) -> None:
    """Add the event to the session's transaction (it commits, or rolls back, with the change)."""
    session.add(
        AuditEvent(
            actor_id=principal.user_id if principal else None,
            actor=(principal.user or "anonymous") if principal else OPERATOR,
            action=action,
            namespace_id=namespace.id,
            namespace=namespace.name,
            target=target[:255],
            details=details,
            address=principal.address if principal else None,
        )
    )


def events(
    session: Session,
    principal: Principal | None,
    namespace: str | None = None,
    action: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[AuditEvent]:
    """Newest first. `principal` None is an operator: every namespace."""
    if not 1 <= limit <= MAX_EVENTS:
        raise InvalidRequest(f"limit must be between 1 and {MAX_EVENTS}")
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if principal is not None:  # the namespaces the caller administers (a read token may read them too)
        if principal.anonymous:
            raise Forbidden("the audit log needs a token")
        readable = [ns for ns, role in principal.roles.items() if "admin" in ROLE_ALLOWS[role]]
        query = query.where(AuditEvent.namespace_id.in_(readable))
    if namespace is not None:
        query = query.where(AuditEvent.namespace == namespace)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    if before is not None:
        if not 0 < before <= MAX_DB_ID:
            raise InvalidRequest("before must be an event id")
        query = query.where(AuditEvent.id < before)
    return list(session.scalars(query))
