"""The operators' user commands: create a user, an organisation with its first admin, disable a user."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from quiver_hub.registry.accounts import audit
from quiver_hub.registry.accounts.access import get_or_create_namespace
from quiver_hub.registry.errors import Conflict, NotFound
from quiver_hub.registry.models import Membership, Namespace, utcnow


def create_user(session: Session, name: str) -> Namespace:
    if session.scalar(select(Namespace).where(Namespace.name == name)) is not None:
        raise Conflict(f"the name {name!r} is taken")
    user = get_or_create_namespace(session, name, "user")
    audit.record(session, None, "user.create", user, name)
    return user


def create_org_for(session: Session, name: str, admin: str) -> Namespace:
    if session.scalar(select(Namespace).where(Namespace.name == name)) is not None:
        raise Conflict(f"the name {name!r} is taken")
    user = session.scalar(select(Namespace).where(Namespace.name == admin, Namespace.kind == "user"))
    if user is None:
        raise NotFound(f"user {admin!r} not found")
    org = get_or_create_namespace(session, name, "org")
    session.add(Membership(org_id=org.id, user_id=user.id, role="admin"))
    audit.record(session, None, "org.create", org, name)
    audit.record(session, None, "member.add", org, admin, role="admin")
    return org


def disable_user(session: Session, name: str) -> Namespace:
    """Every token of a disabled user is refused from the next request on."""
    user = session.scalar(select(Namespace).where(Namespace.name == name, Namespace.kind == "user"))
    if user is None:
        raise NotFound(f"user {name!r} not found")
    if user.disabled_at is None:
        user.disabled_at = utcnow()
        audit.record(session, None, "user.disable", user, name)
    return user
