"""Organisations and their members."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.accounts import audit
from quiver_hub.registry.accounts.access import (
    ROLES,
    Principal,
    get_or_create_namespace,
    require,
    require_whole_account,
)
from quiver_hub.registry.catalogue.names import check_part
from quiver_hub.registry.db import writing
from quiver_hub.registry.errors import Conflict, Forbidden, InvalidRequest, NotFound
from quiver_hub.registry.models import Membership, Namespace


def create_org(sessions: sessionmaker[Session], principal: Principal, name: str) -> Namespace:
    """A new organisation; the caller is its admin."""
    require_whole_account(principal, "creating an organisation")
    check_part(name, "organisation")
    with writing(sessions) as session:
        if session.scalar(select(Namespace).where(Namespace.name == name)) is not None:
            raise Conflict(f"the name {name!r} is taken")
        org = get_or_create_namespace(session, name, "org")
        session.add(Membership(org_id=org.id, user_id=principal.user_id, role="admin"))
        audit.record(session, principal, "org.create", org, name)
        audit.record(session, principal, "member.add", org, principal.user, role="admin")
        session.commit()
        return org


def get_org(session: Session, principal: Principal, name: str) -> Namespace:
    """An organisation the caller belongs to (to anyone else, it is not found)."""
    org = session.scalar(select(Namespace).where(Namespace.name == name, Namespace.kind == "org"))
    if org is None or org.id not in principal.roles:
        raise NotFound(f"organisation {name!r} not found")
    return org


def members(session: Session, principal: Principal, name: str) -> list[tuple[str, str]]:
    """(user, role) of every member, for any member to read."""
    org = get_org(session, principal, name)
    rows = session.execute(
        select(Namespace.name, Membership.role)
        .join(Membership, Membership.user_id == Namespace.id)
        .where(Membership.org_id == org.id)
        .order_by(Namespace.name)
    )
    return [(user, role) for user, role in rows]


def set_member(sessions: sessionmaker[Session], principal: Principal, org_name: str, user: str, role: str) -> None:
    """Add a user to an organisation, or change their role (admins only)."""
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    with writing(sessions) as session:
        org = lock_members(session, principal, org_name)
        if org.kind != "org":
            raise InvalidRequest(f"{org_name!r} is a user, not an organisation")
        member = session.scalar(select(Namespace).where(Namespace.name == user, Namespace.kind == "user"))
        if member is None:
            raise NotFound(f"user {user!r} not found")
        row = session.get(Membership, (org.id, member.id))
        if row is not None and row.role == "admin" and role != "admin":
            keep_an_admin(session, org)
        if row is None:
            session.add(Membership(org_id=org.id, user_id=member.id, role=role))
            audit.record(session, principal, "member.add", org, user, role=role)
        elif row.role != role:
            audit.record(session, principal, "member.role", org, user, role=role, was=row.role)
            row.role = role
        session.commit()


def remove_member(sessions: sessionmaker[Session], principal: Principal, org_name: str, user: str) -> None:
    with writing(sessions) as session:
        org = lock_members(session, principal, org_name)
        member = session.scalar(select(Namespace).where(Namespace.name == user))
        row = session.get(Membership, (org.id, member.id)) if member is not None else None
        if row is None:
            raise NotFound(f"{user!r} is not a member of {org_name!r}")
        if row.role == "admin":
            keep_an_admin(session, org)
        session.delete(row)
        audit.record(session, principal, "member.remove", org, user, was=row.role)
        session.commit()


def lock_members(session: Session, principal: Principal, org_name: str) -> Namespace:
    """The namespace whose members are about to change, locked for this transaction, once the caller is
    found to be its admin again under the lock. Two admins demoting or removing each other at once then
    run one after the other, and the second sees the first's change: an organisation always keeps an
    admin (SQLite's write lock serialises writers anyway; on Postgres this is the namespace row's lock)."""
    org = require(session, principal, "admin", org_name)
    session.execute(select(Namespace.id).where(Namespace.id == org.id).with_for_update())
    if org.kind == "org":
        role = session.scalar(
            select(Membership.role).where(Membership.org_id == org.id, Membership.user_id == principal.user_id)
        )
        if role != "admin":
            raise Forbidden(f"you are no longer an admin of {org_name!r}")
    return org


def keep_an_admin(session: Session, org: Namespace) -> None:
    admins = select(func.count()).select_from(Membership).where(Membership.org_id == org.id, Membership.role == "admin")
    if session.scalar(admins) <= 1:
        raise Conflict(f"{org.name!r} would have no admin left; make someone else admin first")
