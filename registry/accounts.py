"""Users, organisations, tokens, and who may read or write what.

Tokens are random bearer secrets; only their sha256 is stored. A read token reads what its user
may see (public adapters, and private ones of the user's own namespace and organisations);
a write token may also publish, edit and delete in those namespaces.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from quiver_hub.registry.errors import Forbidden, InvalidRequest, Unauthorized
from quiver_hub.registry.models import Membership, Namespace, Token
from quiver_hub.registry.names import check_part

SCOPES = ("read", "write")
TOKEN_PREFIX = "qv_"


@dataclass(frozen=True)
class Principal:
    """Who is calling. Anonymous callers are Principal() with no user."""

    user: str | None = None
    user_id: int | None = None
    scope: str | None = None
    namespace_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def anonymous(self) -> bool:
        return self.user is None


ANONYMOUS = Principal()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def get_or_create_namespace(session: Session, name: str, kind: str) -> Namespace:
    check_part(name, "namespace")
    ns = session.scalar(select(Namespace).where(Namespace.name == name))
    if ns is None:
        ns = Namespace(name=name, kind=kind)
        session.add(ns)
        session.flush()
    elif ns.kind != kind:
        raise InvalidRequest(f"{name!r} already exists as {'a user' if ns.kind == 'user' else 'an organisation'}")
    return ns


def create_token(session: Session, user: str, scope: str = "write", org: str | None = None) -> str:
    """Create the user (and the organisation, with the user as a member) if new; return a new token."""
    if scope not in SCOPES:
        raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    user_ns = get_or_create_namespace(session, user, "user")
    if org is not None:
        org_ns = get_or_create_namespace(session, org, "org")
        if session.get(Membership, (org_ns.id, user_ns.id)) is None:
            session.add(Membership(org_id=org_ns.id, user_id=user_ns.id))
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(Token(user_id=user_ns.id, token_hash=hash_token(token), scope=scope))
    session.flush()
    return token


def authenticate(session: Session, token: str | None) -> Principal:
    """The principal behind a bearer token; ANONYMOUS without one, Unauthorized for a bad one."""
    if not token:
        return ANONYMOUS
    row = session.scalar(select(Token).where(Token.token_hash == hash_token(token)))
    if row is None:
        raise Unauthorized("invalid or revoked token")
    orgs = session.scalars(select(Membership.org_id).where(Membership.user_id == row.user_id))
    return Principal(
        user=row.user.name, user_id=row.user_id, scope=row.scope, namespace_ids=frozenset([row.user_id, *orgs])
    )


def user_orgs(session: Session, principal: Principal) -> list[str]:
    """The organisations the caller belongs to, by name."""
    query = select(Namespace.name).where(Namespace.id.in_(principal.namespace_ids), Namespace.kind == "org")
    return sorted(session.scalars(query))


def can_read(principal: Principal, namespace_id: int, visibility: str) -> bool:
    return visibility == "public" or namespace_id in principal.namespace_ids


def require_write_token(principal: Principal, action: str) -> None:
    """Work that stores something of the caller's (a cluster run) needs a write token."""
    if principal.anonymous:
        raise Unauthorized(f"{action} needs a token: send Authorization: Bearer <token>")
    if principal.scope != "write":
        raise Forbidden(f"{action} needs a write token; this one is read-only")


def require_write(session: Session, principal: Principal, namespace: str) -> Namespace:
    """Writes need a write token of a user who owns the namespace or belongs to the organisation.

    Decided on the namespace alone, so the answer never reveals whether a private adapter exists.
    """
    if principal.anonymous:
        raise Unauthorized("writing needs a token: send Authorization: Bearer <token>")
    ns = session.scalar(select(Namespace).where(Namespace.name == namespace))
    if ns is None or ns.id not in principal.namespace_ids:
        raise Forbidden(f"user {principal.user!r} cannot write to namespace {namespace!r}")
    if principal.scope != "write":
        raise Forbidden("this token is read-only; create one with --scope write")
    return ns
