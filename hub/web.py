"""What the pages share: templates, safe Markdown, the signed-in user, CSRF tokens and the security headers.

Cards are Markdown rendered by markdown-it-py (raw HTML allowed, as on the Hugging Face Hub) and then
sanitised by nh3 (Ammonia): no script, no event handler, no javascript: URL survives. Every page carries a
Content-Security-Policy that allows scripts and styles from the hub only, so even a sanitiser's miss could
not run anything. A signed-in browser holds its token in a signed, HttpOnly, SameSite=Lax session
cookie; every form that changes something carries the session's CSRF token.
"""

from __future__ import annotations

import hmac
import os
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

import nh3
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup

import quiver_hub
from quiver_hub.hub.services import Services
from quiver_hub.hub.settings import Settings
from quiver_hub.registry.accounts import ANONYMOUS, Principal, authenticate
from quiver_hub.registry.cards import FRONT_MATTER
from quiver_hub.registry.errors import InvalidRequest, RegistryError

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
templates.env.globals["quiver_version"] = quiver_hub.__version__


def secret_key(settings: Settings) -> str:
    """QUIVER_SECRET_KEY, else one made once and kept in QUIVER_HOME (replicas must share one: set it)."""
    if settings.secret_key:
        return settings.secret_key
    path = settings.home / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        key = secrets.token_urlsafe(48)
        with os.fdopen(fd, "w") as f:
            f.write(key)
        return key


def page_principal(request: Request, state: Services) -> Principal:
    """Who the browser is signed in as (anonymous when not, or when its token no longer works)."""
    token = request.session.get("token")
    if not token:
        return ANONYMOUS
    try:
        with state.sessions() as session:
            principal = authenticate(session, token)
    except RegistryError:
        request.session.clear()
        return ANONYMOUS
    return principal


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf(request: Request, sent: str | None) -> None:
    expected = request.session.get("csrf")
    if not expected or not sent or not hmac.compare_digest(expected, sent):
        raise InvalidRequest("the form is stale or was not sent from this hub's pages; reload it and try again")


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    state: Services = request.app.state.services
    principal = context.pop("principal", None) or page_principal(request, state)
    response = templates.TemplateResponse(
        request,
        template,
        {"user": principal.user, "csrf": csrf_token(request), "endpoint": str(request.base_url).rstrip("/"), **context},
        status_code=status,
    )
    response.headers.update(SECURITY_HEADERS)
    return response
