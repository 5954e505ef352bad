"""Signing in and out, your tokens, and organisation pages (members and roles): the pages that change who may do
what. Every form carries a CSRF token (hub/pages/web.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from quiver_hub.hub.deps import StateDep
from quiver_hub.hub.pages.web import check_csrf, not_found, page, page_principal, sign_in, sign_out
from quiver_hub.registry.accounts import orgs, tokens
from quiver_hub.registry.accounts.access import allowed
from quiver_hub.registry.errors import NotFound, RegistryError

router = APIRouter(include_in_schema=False)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    return page(request, "login.html")


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, state: StateDep, token: Annotated[str, Form()], csrf: Annotated[str, Form()]) -> Response:
    check_csrf(request, state, csrf)
    try:
        principal = sign_in(request, state, token.strip())
    except RegistryError as e:
        return page(request, "login.html", 401, error=e.message)
    return RedirectResponse(f"/{principal.user}", status_code=303)


@router.post("/logout")
def logout(request: Request, state: StateDep, csrf: Annotated[str, Form()]) -> Response:
    check_csrf(request, state, csrf)
    sign_out(request, state)
    return RedirectResponse("/", status_code=303)


@router.get("/settings/tokens", response_class=HTMLResponse)
def tokens_page(request: Request, state: StateDep) -> Response:
    principal = page_principal(request, state)
    if principal.anonymous:
        return RedirectResponse("/login", status_code=303)
    with state.sessions() as session:
        rows = tokens.list_tokens(session, principal)
    return page(request, "tokens.html", principal=principal, tokens=rows)


@router.post("/settings/tokens", response_class=HTMLResponse)
def create_token(
    request: Request,
    state: StateDep,
    csrf: Annotated[str, Form()],
    name: Annotated[str, Form()] = "",
    scope: Annotated[str, Form()] = "read",
    expires_in_days: Annotated[str, Form()] = "",
) -> Response:
    """A new token, shown once in this answer (never through a URL)."""
    principal = check_csrf(request, state, csrf)
    if principal.anonymous:
        return RedirectResponse("/login", status_code=303)
    try:
        expires = tokens.expiry_in_days(expires_in_days)
        _, secret = tokens.issue_token(state.sessions, principal, name, scope, expires)
    except RegistryError as e:
        with state.sessions() as session:
            rows = tokens.list_tokens(session, principal)
        return page(request, "tokens.html", 400, principal=principal, tokens=rows, error=e.message)
    with state.sessions() as session:
        rows = tokens.list_tokens(session, principal)
    return page(request, "tokens.html", principal=principal, tokens=rows, new_token=secret)


@router.post("/settings/tokens/{token_id}/revoke")
def revoke_token(request: Request, state: StateDep, token_id: int, csrf: Annotated[str, Form()]) -> Response:
    principal = check_csrf(request, state, csrf)
    if not principal.anonymous:
        tokens.revoke_token(state.sessions, principal, token_id)
    return RedirectResponse("/settings/tokens", status_code=303)


@router.get("/orgs/{org}", response_class=HTMLResponse)
def org_page(request: Request, state: StateDep, org: str, error: str | None = None) -> HTMLResponse:
    principal = page_principal(request, state)
    with state.sessions() as session:
        try:
            members = orgs.members(session, principal, org)
        except NotFound:
            return not_found(request, f"Organisation {org}")
        admin = allowed(principal, "admin", orgs.get_org(session, principal, org).id)
    return page(request, "org.html", principal=principal, org=org, members=members, admin=admin, error=error)


@router.post("/orgs/{org}/members")
def set_member(
    request: Request,
    state: StateDep,
    org: str,
    csrf: Annotated[str, Form()],
    user: Annotated[str, Form()],
    role: Annotated[str, Form()],
) -> Response:
    principal = check_csrf(request, state, csrf)
    try:
        orgs.set_member(state.sessions, principal, org, user, role)
    except RegistryError as e:
        return org_page(request, state, org, error=e.message)
    return RedirectResponse(f"/orgs/{org}", status_code=303)


@router.post("/orgs/{org}/members/{user}/remove")
def remove_member(request: Request, state: StateDep, org: str, user: str, csrf: Annotated[str, Form()]) -> Response:
    principal = check_csrf(request, state, csrf)
    try:
        orgs.remove_member(state.sessions, principal, org, user)
    except RegistryError as e:
        return org_page(request, state, org, error=e.message)
    return RedirectResponse(f"/orgs/{org}", status_code=303)
