"""Tokens: random bearer secrets, shown once and stored as their sha256, with a name, a scope, an optional
expiry and an optional list of namespaces they are limited to. Users make and revoke their own; the
admins of an organisation list and revoke the tokens limited to it; operators make tokens for anyone
(`quiver admin`)."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.accounts import audit
from quiver_hub.registry.accounts.access import (
    ROLE_ALLOWS,
    SCOPES,
    TOKEN_PREFIX,
    Principal,
    get_or_create_namespace,
    hash_token,
    reaches,
    require,
)
from quiver_hub.registry.db import writing
from quiver_hub.registry.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from quiver_hub.registry.limits import MAX_DB_ID, MAX_TOKEN_DAYS, MAX_TOKENS_PER_USER
from quiver_hub.registry.models import Membership, Namespace, Token, utcnow

DAYS = re.compile(r"[0-9]{1,6}")  # ASCII digits only: str.isdigit() also takes "²", which int() refuses


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    return scope


def new_token_row(
    session: Session,
    user: Namespace,
    scope: str,
    name: str,
    expires_at: datetime | None = None,
    namespaces: list[str] | None = None,
) -> tuple[Token, str]:
    """A new token row for `user` and its secret (the only time the secret exists outside the caller)."""
    if len(name) > 64:
        raise InvalidRequest("a token's name is at most 64 characters")
    secret = new_secret()
    row = Token(
        user_id=user.id,
        token_hash=hash_token(secret),
        scope=check_scope(scope),
        name=name,
        hint=secret[:8],
        namespaces=namespaces,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, secret


def token_for_user(session: Session, user: str, scope: str = "write", org: str | None = None, name: str = "") -> str:
    """Operators: a token for `user` (created if new); with `org`, the user is a member of it (the admin of
    an organisation this creates, a write member of an existing one). The caller commits."""
    check_scope(scope)
    user_ns = get_or_create_namespace(session, user, "user")
    if user_ns.disabled_at is not None:
        raise InvalidRequest(f"user {user!r} is disabled")
    if org is not None:
        new = session.scalar(select(Namespace).where(Namespace.name == org)) is None
        org_ns = get_or_create_namespace(session, org, "org")
        if session.get(Membership, (org_ns.id, user_ns.id)) is None:
            session.add(Membership(org_id=org_ns.id, user_id=user_ns.id, role="admin" if new else "write"))
            audit.record(session, None, "member.add", org_ns, user, role="admin" if new else "write")
    row, secret = new_token_row(session, user_ns, scope, name or "operator")
    audit.record(session, None, "token.create", user_ns, f"token {row.id}", name=row.name, scope=scope)
    return secret


def expiry_in_days(days: str) -> datetime | None:
    """The expiry `days` whole days from now (a form's field; empty: never). InvalidRequest for anything
    but a whole number of days from 1 to MAX_TOKEN_DAYS."""
    days = days.strip()
    if not days:
        return None
    if not DAYS.fullmatch(days) or not 1 <= int(days) <= MAX_TOKEN_DAYS:
        raise InvalidRequest(f"expires in days: a whole number from 1 to {MAX_TOKEN_DAYS}, or empty for never")
    return utcnow() + timedelta(days=int(days))


def check_expiry(expires_at: datetime | None) -> datetime | None:
    """A token's expiry: with a time zone, in the future, at most MAX_TOKEN_DAYS ahead."""
    if expires_at is None:
        return None
    if expires_at.tzinfo is None or expires_at.utcoffset() is None:
        raise InvalidRequest("expires_at needs a time zone (for example 2027-01-31T00:00:00Z)")
    now = utcnow()
    if expires_at <= now:
        raise InvalidRequest("expires_at must be in the future")
    if expires_at - now > timedelta(days=MAX_TOKEN_DAYS):
        raise InvalidRequest(f"expires_at is at most {MAX_TOKEN_DAYS} days ahead")
    return expires_at.astimezone(UTC)


def issue_token(
    sessions: sessionmaker[Session],
    principal: Principal,
    name: str,
    scope: str,
    expires_at: datetime | None = None,
    namespaces: list[str] | None = None,
) -> tuple[Token, str]:
    """A token the caller makes for themselves: never more than the token they use (a read token cannot
    make a write token; a token limited to some namespaces cannot make one that reaches others)."""
    if principal.anonymous:
        raise Unauthorized("making a token needs a token: sign in first")
    check_scope(scope)
    if scope == "write" and principal.scope != "write":
        raise Forbidden("a read-only token cannot make a write token")
    expires_at = check_expiry(expires_at)
    with writing(sessions) as session:
        user = session.get(Namespace, principal.user_id)
        names = dict(
            session.execute(select(Namespace.id, Namespace.name).where(Namespace.id.in_(principal.roles))).all()
        )
        if namespaces is not None:  # within what the calling token reaches
            outside = sorted(set(namespaces) - set(names.values()))
            if outside or not namespaces:
                raise Forbidden(f"this token cannot reach namespaces {', '.join(outside) or '(none)'}")
        else:  # as limited as the calling token
            caller = session.get(Token, principal.token_id)
            namespaces = caller.namespaces if caller is not None else None
        active = select(func.count()).select_from(Token).where(Token.user_id == user.id, Token.revoked_at.is_(None))
        if session.scalar(active) >= MAX_TOKENS_PER_USER:
            raise InvalidRequest(f"at most {MAX_TOKENS_PER_USER} active tokens a user; revoke some")
        row, secret = new_token_row(session, user, scope, name, expires_at, namespaces)
        audit.record(session, principal, "token.create", user, f"token {row.id}", name=name, scope=scope)
        session.commit()
        return row, secret


def list_tokens(session: Session, principal: Principal) -> list[Token]:
    """The caller's own tokens that its token reaches, newest first (secrets are never shown again)."""
    if principal.anonymous:
        raise Unauthorized("listing tokens needs a token")
    rows = session.scalars(select(Token).where(Token.user_id == principal.user_id).order_by(Token.id.desc()))
    return [row for row in rows if reaches(principal, row.namespaces)]


def org_tokens(session: Session, principal: Principal, org: str) -> list[Token]:
    """The tokens limited to an organisation, for its admins."""
    require(session, principal, "admin", org)
    rows = session.scalars(select(Token).order_by(Token.id.desc()).limit(10_000))
    return [t for t in rows if t.namespaces is not None and org in t.namespaces]


def revoke_token(sessions: sessionmaker[Session], principal: Principal | None, token_id: int) -> Token:
    """Revoke a token: its owner may, the admins of every namespace it is limited to may, and operators
    (principal None) may. Anyone else is told it does not exist."""
    with writing(sessions) as session:
        row = session.get(Token, token_id) if 0 < token_id <= MAX_DB_ID else None
        if row is None or not may_revoke(session, principal, row):
            raise NotFound(f"token {token_id} not found")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            audit.record(session, principal, "token.revoke", row.user, f"token {row.id}", name=row.name)
        session.commit()
        return row


def may_revoke(session: Session, principal: Principal | None, row: Token) -> bool:
    if principal is None:
        return True
    if principal.anonymous or principal.scope != "write":
        return False
    if row.user_id == principal.user_id and reaches(principal, row.namespaces):
        return True
    if not row.namespaces:
        return False
    ids = dict(session.execute(select(Namespace.name, Namespace.id).where(Namespace.name.in_(row.namespaces))).all())
    return all("admin" in ROLE_ALLOWS.get(principal.roles.get(ids.get(n, -1), ""), ()) for n in row.namespaces)
