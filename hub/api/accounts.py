"""Accounts people manage themselves: their tokens, organisations and members, and the audit log
(registry/accounts/access.py has the one table of what a role may do)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from quiver_hub.hub.deps import PrincipalDep, SessionDep, StateDep
from quiver_hub.registry import limits
from quiver_hub.registry.accounts import audit, orgs, tokens
from quiver_hub.registry.accounts.access import user_orgs
from quiver_hub.registry.errors import Unauthorized
from quiver_hub.registry.models import AuditEvent, Token

router = APIRouter(prefix="/v1", tags=["accounts"])


class TokenIn(BaseModel):
    model_config = {"extra": "forbid"}
    name: str = Field("", max_length=64)
    scope: Literal["read", "write"] = "read"
    expires_at: datetime | None = Field(None, description="when it stops working (UTC); none: never")
    namespaces: list[str] | None = Field(None, max_length=64, description="limited to these namespaces")


class TokenOut(BaseModel):
    id: int
    name: str
    scope: str
    hint: str = Field(description="the token's first characters, to recognise it")
    namespaces: list[str] | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewToken(TokenOut):
    token: str = Field(description="the secret: shown this once, stored only as its hash")


def token_out(t: Token) -> TokenOut:
    return TokenOut(
        id=t.id,
        name=t.name,
        scope=t.scope,
        hint=t.hint,
        namespaces=t.namespaces,
        created_at=t.created_at,
        expires_at=t.expires_at,
        last_used_at=t.last_used_at,
        revoked_at=t.revoked_at,
    )


@router.post("/tokens", response_model=NewToken, status_code=201)
def create_token(body: TokenIn, state: StateDep, principal: PrincipalDep) -> NewToken:
    """A new token for the caller; its secret is in this answer and nowhere else, ever."""
    row, secret = tokens.issue_token(state.sessions, principal, body.name, body.scope, body.expires_at, body.namespaces)
    return NewToken(**token_out(row).model_dump(), token=secret)


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(session: SessionDep, principal: PrincipalDep) -> list[TokenOut]:
    """The caller's tokens (never their secrets), with when each was last used."""
    return [token_out(t) for t in tokens.list_tokens(session, principal)]


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(token_id: int, state: StateDep, principal: PrincipalDep) -> Response:
    """Revoke a token: refused at once on every hub process sharing the database."""
    if principal.anonymous:
        raise Unauthorized("revoking a token needs a token")
    tokens.revoke_token(state.sessions, principal, token_id)
    return Response(status_code=204)


class Me(BaseModel):
    user: str
    scope: str
    orgs: list[str]
    token_id: int | None


@router.get("/whoami", response_model=Me)
def whoami(session: SessionDep, principal: PrincipalDep) -> Me:
    if principal.anonymous:
        raise Unauthorized("no token: you are anonymous")
    return Me(
        user=principal.user, scope=principal.scope, orgs=user_orgs(session, principal), token_id=principal.token_id
    )


class OrgIn(BaseModel):
    model_config = {"extra": "forbid"}
    name: str = Field(min_length=1, max_length=96)


class Member(BaseModel):
    user: str
    role: Literal["admin", "write", "read"]


class Members(BaseModel):
    org: str
    members: list[Member]


@router.post("/orgs", response_model=Members, status_code=201)
def create_org(body: OrgIn, state: StateDep, principal: PrincipalDep) -> Members:
    """A new organisation, with the caller as its admin."""
    orgs.create_org(state.sessions, principal, body.name)
    return Members(org=body.name, members=[Member(user=principal.user, role="admin")])


@router.get("/orgs/{org}/members", response_model=Members)
def list_members(org: str, session: SessionDep, principal: PrincipalDep) -> Members:
    return Members(org=org, members=[Member(user=u, role=r) for u, r in orgs.members(session, principal, org)])


@router.post("/orgs/{org}/members", response_model=Members)
def set_member(org: str, body: Member, state: StateDep, principal: PrincipalDep) -> Members:
    """Add a member, or change a member's role (admins)."""
    orgs.set_member(state.sessions, principal, org, body.user, body.role)
    with state.sessions() as session:
        return Members(org=org, members=[Member(user=u, role=r) for u, r in orgs.members(session, principal, org)])


@router.delete("/orgs/{org}/members/{user}", status_code=204)
def remove_member(org: str, user: str, state: StateDep, principal: PrincipalDep) -> Response:
    orgs.remove_member(state.sessions, principal, org, user)
    return Response(status_code=204)


@router.get("/orgs/{org}/tokens", response_model=list[TokenOut])
def org_tokens(org: str, session: SessionDep, principal: PrincipalDep) -> list[TokenOut]:
    """The tokens limited to the organisation (admins), which they may revoke."""
    return [token_out(t) for t in tokens.org_tokens(session, principal, org)]


class Event(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    namespace: str
    target: str
    details: dict
    address: str | None


def event_out(e: AuditEvent) -> Event:
    return Event(
        id=e.id,
        at=e.at,
        actor=e.actor,
        action=e.action,
        namespace=e.namespace,
        target=e.target,
        details=e.details,
        address=e.address,
    )


@router.get("/audit", response_model=list[Event])
def audit_log(
    session: SessionDep,
    principal: PrincipalDep,
    namespace: str | None = None,
    action: str | None = None,
    before: Annotated[int | None, Query(description="events older than this id (the next page)")] = None,
    limit: Annotated[int, Query(ge=1, le=limits.MAX_EVENTS)] = 100,
) -> list[Event]:
    """The writes in the namespaces the caller administers (its own; organisations it is admin of)."""
    return [event_out(e) for e in audit.events(session, principal, namespace, action, before, limit)]
