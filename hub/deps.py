"""FastAPI dependencies: the hub's state, a database session, the calling principal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from hub.state import HubState
from registry.accounts import Principal, authenticate
from registry.errors import Unauthorized


def get_state(request: Request) -> HubState:
    return request.app.state.hub


def get_session(state: Annotated[HubState, Depends(get_state)]) -> Iterator[Session]:
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


def get_principal(request: Request, state: Annotated[HubState, Depends(get_state)]) -> Principal:
    token = bearer_token(request)
    with state.sessions() as session:
        return authenticate(session, token)


StateDep = Annotated[HubState, Depends(get_state)]
SessionDep = Annotated[Session, Depends(get_session)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
