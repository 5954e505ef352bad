"""FastAPI dependencies: the hub's state, a database session, the calling principal."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from quiver_hub.hub.services import Services
from quiver_hub.registry.accounts.access import Principal, authenticate
from quiver_hub.registry.errors import Unauthorized


def get_state(request: Request) -> Services:
    return request.app.state.services


def get_session(state: Annotated[Services, Depends(get_state)]) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return token.strip()


# Declares the scheme in the OpenAPI spec (and the Authorize button of /docs); bearer_token reads it.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="A Quiver token (`quiver token create`), sent as `Authorization: Bearer <token>`. "
    "Without one you read public adapters only.",
)


def client_address(request: Request) -> str | None:
    """Where a request came from, for the audit log (the same on every surface)."""
    return request.client.host if request.client else None


def get_principal(
    request: Request,
    state: Annotated[Services, Depends(get_state)],
    _declared: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
) -> Principal:
    token = bearer_token(request)
    with state.sessions() as session:
        principal = authenticate(session, token)
    return replace(principal, address=client_address(request))


StateDep = Annotated[Services, Depends(get_state)]
SessionDep = Annotated[Session, Depends(get_session)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
