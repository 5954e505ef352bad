"""Signed-in page sessions, kept on the server.

The browser's cookie holds one random id and nothing else; the database keeps its sha256, the id of the
token the user signed in with (never the token: the cookie is signed, not encrypted, so whatever it holds
is readable by whoever sees it) and the session's CSRF secret. Signing in makes a new id and a new CSRF
secret; signing out ends the row, so a replayed cookie is anonymous; revoking the token, or the token
expiring, or its user being disabled, ends every session made with it from the next request on, on every
hub process, because each request reads the token's row again.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.accounts.access import Principal, authenticate, hash_token, principal_of
from quiver_hub.registry.db import writing
from quiver_hub.registry.errors import RegistryError, Unauthorized
from quiver_hub.registry.limits import MAX_SESSION_KEY_CHARS
from quiver_hub.registry.models import Token, WebSession, utcnow

LIFETIME = timedelta(days=14)


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def sign_in(sessions: sessionmaker[Session], token: str) -> tuple[Principal, str, str]:
    """A new session for whoever `token` belongs to: (principal, the cookie's id, the CSRF secret).
    Unauthorized when the token does not work."""
    if not token:
        raise Unauthorized("paste a token to sign in")
    with writing(sessions) as session:
        principal = authenticate(session, token)
        key, csrf = secrets.token_urlsafe(32), new_csrf()
        session.add(
            WebSession(key_hash=hash_token(key), token_id=principal.token_id, csrf=csrf, expires_at=utcnow() + LIFETIME)
        )
        session.commit()
        return principal, key, csrf


def resume(session: Session, key: str) -> tuple[Principal, str] | None:
    """The principal and CSRF secret of a live session; None when the id names no live session, or its
    token no longer works."""
    if not isinstance(key, str) or len(key) > MAX_SESSION_KEY_CHARS:
        return None
    row = session.scalar(select(WebSession).where(WebSession.key_hash == hash_token(key)))
    if row is None or row.ended_at is not None or row.expires_at <= utcnow():
        return None
    try:
        principal = principal_of(session, session.get(Token, row.token_id))
    except RegistryError:
        return None
    return principal, row.csrf


def sign_out(sessions: sessionmaker[Session], key: str) -> None:
    """End the session `key` names (nothing when it names none)."""
    if not isinstance(key, str) or len(key) > MAX_SESSION_KEY_CHARS:
        return
    with writing(sessions) as session:
        session.execute(
            update(WebSession)
            .where(WebSession.key_hash == hash_token(key), WebSession.ended_at.is_(None))
            .values(ended_at=utcnow())
        )
        session.commit()
