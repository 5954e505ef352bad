"""Who is calling, and what they may do (docs/security.md).

A caller is a Principal: anonymous, or a user acting through one bearer token. The token's scope (read or
write) and the namespaces it is limited to narrow what the user's roles allow. One table says what a role
may do, and one function (`allowed`) answers every route's question:

| role in a namespace        | read private adapters | write adapters | manage members and tokens |
|----------------------------|-----------------------|----------------|---------------------------|
| owner (the user's own)     | yes                   | yes            | yes                       |
| admin of an organisation   | yes                   | yes            | yes                       |
| write member               | yes                   | yes            | no                        |
| read member                | yes                   | no             | no                        |
| anyone else, and anonymous | no                    | no             | no                        |

Writing adapters is publishing, editing, tagging, moving and deleting them. A read token only reads,
whatever the role. A token limited to some namespaces acts only there: its roles elsewhere are dropped,
it sees and revokes only tokens limited within its own namespaces (`reaches`), and it cannot act on the
account as a whole, such as making an organisation (`require_whole_account`). Revoked and expired
tokens, and the tokens of a disabled user, are refused at once: every request looks the token up in the
database, so every hub process sharing it agrees within one request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from quiver_hub.registry.catalogue.names import check_part
from quiver_hub.registry.db import begin_write
from quiver_hub.registry.errors import Forbidden, InvalidRequest, Unauthorized
from quiver_hub.registry.models import Membership, Namespace, Token, utcnow

SCOPES = ("read", "write")
ROLES = ("admin", "write", "read")
ACTIONS = ("read", "write", "admin")
ROLE_ALLOWS = {
    "owner": frozenset({"read", "write", "admin"}),
    "admin": frozenset({"read", "write", "admin"}),
    "write": frozenset({"read", "write"}),
    "read": frozenset({"read"}),
}
TOKEN_PREFIX = "qv_"  # recognisable in leaked text (secret scanners)
LAST_USED_EVERY = timedelta(seconds=60)  # how stale a token's last-used time may get (one write a minute)


@dataclass(frozen=True)
class Principal:
    """Who is calling. Anonymous callers are Principal() with no user."""

    user: str | None = None
    user_id: int | None = None
    scope: str | None = None
    roles: dict[int, str] = field(default_factory=dict)  # namespace id -> role, within the token's limits
    token_id: int | None = None
    address: str | None = None  # where the request came from, for the audit log
    limits: frozenset[str] | None = None  # the namespaces its token is limited to (None: not limited)

    @property
    def anonymous(self) -> bool:
        return self.user is None

    @property
    def namespace_ids(self) -> frozenset[int]:
        """The namespaces whose private adapters this caller may read."""
        return frozenset(self.roles)


ANONYMOUS = Principal()


def allowed(principal: Principal, action: str, namespace_id: int) -> bool:
    """The one answer to "may this caller do this here?" (the table above)."""
    role = principal.roles.get(namespace_id)
    if role is None:
        return False
    if action != "read" and principal.scope != "write":
        return False
    return action in ROLE_ALLOWS[role]


def can_read(principal: Principal, namespace_id: int, visibility: str) -> bool:
    return visibility == "public" or allowed(principal, "read", namespace_id)


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


def authenticate(session: Session, token: str | None) -> Principal:
    """The principal behind a bearer token; ANONYMOUS without one, Unauthorized for a bad one."""
    if not token:
        return ANONYMOUS
    return principal_of(session, session.scalar(select(Token).where(Token.token_hash == hash_token(token))))


def principal_of(session: Session, row: Token | None) -> Principal:
    """The principal acting through a token row (a bearer token's, or a signed-in page session's);
    Unauthorized when it no longer works."""
    now = utcnow()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("invalid or revoked token")
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthorized("this token has expired; create a new one")
    if row.user.disabled_at is not None:
        raise Unauthorized(f"user {row.user.name!r} is disabled")
    roles = {row.user_id: "owner"}
    for membership in session.execute(
        select(Membership.org_id, Membership.role, Namespace.name)
        .join(Namespace, Namespace.id == Membership.org_id)
        .where(Membership.user_id == row.user_id)
    ):
        roles[membership.org_id] = membership.role
    if row.namespaces is not None:  # a token limited to some namespaces acts only there
        names = dict(session.execute(select(Namespace.id, Namespace.name).where(Namespace.id.in_(sorted(roles)))).all())
        roles = {ns: role for ns, role in roles.items() if names.get(ns) in row.namespaces}
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_EVERY:
        begin_write(session)  # requests of one token arrive together: each would upgrade its read
        session.execute(
            update(Token)
            .where(Token.id == row.id, or_(Token.last_used_at.is_(None), Token.last_used_at < now - LAST_USED_EVERY))
            .values(last_used_at=now)
        )
        session.commit()
    limits = frozenset(row.namespaces) if row.namespaces is not None else None
    return Principal(
        user=row.user.name, user_id=row.user_id, scope=row.scope, roles=roles, token_id=row.id, limits=limits
    )


def user_orgs(session: Session, principal: Principal) -> list[str]:
    """The organisations the caller belongs to (within its token's limits), by name."""
    query = select(Namespace.name).where(Namespace.id.in_(principal.namespace_ids), Namespace.kind == "org")
    return sorted(session.scalars(query))


def require_write_token(principal: Principal, action: str) -> None:
    """Work that stores something of the caller's (a cluster run) needs a write token."""
    if principal.anonymous:
        raise Unauthorized(f"{action} needs a token: send Authorization: Bearer <token>")
    if principal.scope != "write":
        raise Forbidden(f"{action} needs a write token; this one is read-only")


def reaches(principal: Principal, namespaces: list[str] | None) -> bool:
    """Whether the caller's token reaches everything a thing limited to `namespaces` reaches (None: all of
    the user's namespaces): a token limited to some namespaces acts on nothing that reaches further."""
    if principal.limits is None:
        return True
    return namespaces is not None and set(namespaces) <= principal.limits


def require_whole_account(principal: Principal, action: str) -> None:
    """Work on the user's account as a whole (making an organisation) needs a write token that is not
    limited to some namespaces."""
    require_write_token(principal, action)
    if principal.limits is not None:
        raise Forbidden(
            f"{action} needs a token that is not limited to namespaces; this one is limited to "
            + ", ".join(sorted(principal.limits))
        )


def require(session: Session, principal: Principal, action: str, namespace: str) -> Namespace:
    """The namespace, when the caller may do `action` ("write" or "admin") there; else why not.

    Decided on the namespace alone, so the answer never reveals whether a private adapter exists.
    """
    if principal.anonymous:
        raise Unauthorized("this needs a token: send Authorization: Bearer <token>")
    ns = session.scalar(select(Namespace).where(Namespace.name == namespace))
    if ns is not None and allowed(principal, action, ns.id):
        return ns
    if principal.scope != "write":
        raise Forbidden("this token is read-only; create one with scope write")
    role = principal.roles.get(ns.id) if ns is not None else None
    if role is not None:
        raise Forbidden(
            f"your role in {namespace!r} is {role}, which may not {'manage it' if action == 'admin' else 'write'}"
        )
    raise Forbidden(
        f"user {principal.user!r} cannot {'manage' if action == 'admin' else 'write to'} namespace {namespace!r}"
    )


def require_write(session: Session, principal: Principal, namespace: str) -> Namespace:
    """Writes to adapters (publish, edit, tag, move, delete) need role write or more, and a write token."""
    return require(session, principal, "write", namespace)
