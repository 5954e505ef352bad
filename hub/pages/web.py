"""What the pages share: templates, safe Markdown, the signed-in user, CSRF tokens and the security headers.

Cards are Markdown rendered by markdown-it-py (raw HTML allowed, as on the Hugging Face Hub) and then
sanitised by nh3 (Ammonia): no script, no event handler, no javascript: URL survives. Every page carries a
Content-Security-Policy that allows scripts and styles from the hub only, so even a sanitiser's miss could
not run anything. A signed-in browser holds only a random session id in a signed, HttpOnly, SameSite=Lax
cookie (registry/sessions.py keeps the session); every form that changes something carries the
session's CSRF token.
"""

from __future__ import annotations

import hmac
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import nh3
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup

from quiver_hub.hub.deps import client_address
from quiver_hub.hub.services import Services
from quiver_hub.hub.settings import VERSION
from quiver_hub.registry.accounts import sessions
from quiver_hub.registry.accounts.access import ANONYMOUS, Principal
from quiver_hub.registry.catalogue.cards import FRONT_MATTER
from quiver_hub.registry.errors import InvalidRequest

HERE = Path(__file__).parent
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
_markdown = MarkdownIt("commonmark", {"html": True, "linkify": False}).enable("table")
ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "div", "dl", "dt", "em", "h1", "h2", "h3",
    "h4", "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "pre", "s", "span", "strong", "sub", "summary", "sup",
    "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip


def render_markdown(text: str) -> Markup:
    """A model card as safe HTML (its YAML metadata left out: the page shows it as metadata)."""
    html = _markdown.render(FRONT_MATTER.sub("", text, count=1))
    clean = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes={"a": {"href", "title"}, "img": {"src", "alt", "title", "width", "height"}, "*": {"align"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="nofollow noopener noreferrer",
    )
    return Markup(clean)  # noqa: S704 - sanitised above


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def when(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M UTC")


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(markdown=render_markdown, size=human_size, when=when)
templates.env.globals["quiver_version"] = VERSION


def page_principal(request: Request, state: Services) -> Principal:
    """Who the browser is signed in as: the principal of its live server-side session (anonymous when it
    has none, or its token no longer works), with the request's address. Read once per request."""
    known = getattr(request.state, "principal", None)
    if known is not None:
        return known
    principal, request.state.csrf = ANONYMOUS, None
    if "token" in request.session:  # a cookie from before sessions were kept on the server: drop it
        request.session.clear()
    key = request.session.get("sid")
    if key:
        with state.sessions() as session:
            found = sessions.resume(session, key)
        if found is None:
            request.session.clear()  # ended, expired, or its token was revoked
        else:
            principal, request.state.csrf = found
    request.state.principal = principal = replace(principal, address=client_address(request))
    return principal


def sign_in(request: Request, state: Services, token: str) -> Principal:
    """A new server-side session for the token: the cookie gets a new random id (and nothing else), the
    session a new CSRF secret. Unauthorized when the token does not work."""
    principal, key, csrf = sessions.sign_in(state.sessions, token)
    if previous := request.session.get("sid"):  # signing in again ends the session the browser had
        sessions.sign_out(state.sessions, previous)
    request.session.clear()
    request.session["sid"] = key
    request.state.principal, request.state.csrf = replace(principal, address=client_address(request)), csrf
    return request.state.principal


def sign_out(request: Request, state: Services) -> None:
    key = request.session.get("sid")
    if key:
        sessions.sign_out(state.sessions, key)
    request.session.clear()
    request.state.principal, request.state.csrf = ANONYMOUS, None


def csrf_token(request: Request, state: Services) -> str:
    """The form secret: the signed-in session's (kept on the server), or for a visitor not signed in one
    kept in the cookie (it guards only the sign-in form, and is replaced at sign-in)."""
    page_principal(request, state)
    if request.state.csrf:
        return request.state.csrf
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = sessions.new_csrf()
    return token


def check_csrf(request: Request, state: Services, sent: str | None) -> Principal:
    """The caller of a form that changes something, once its CSRF token is the session's."""
    principal = page_principal(request, state)
    expected = request.state.csrf or (request.session.get("csrf") if principal.anonymous else None)
    if not expected or not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise InvalidRequest("the form is stale or was not sent from this hub's pages; reload it and try again")
    return principal


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    state: Services = request.app.state.services
    principal = context.pop("principal", None) or page_principal(request, state)
    response = templates.TemplateResponse(
        request,
        template,
        {
            "user": principal.user,
            "csrf": csrf_token(request, state),
            "endpoint": str(request.base_url).rstrip("/"),
            **context,
        },
        status_code=status,
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def not_found(request: Request, what: str) -> HTMLResponse:
    return page(request, "error.html", 404, heading="404 Not Found", message=f"{what} was not found.")
