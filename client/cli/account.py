"""Commands on who you are: login, logout, whoami, your tokens, the audit log."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from quiver_hub.api import HubClient
from quiver_hub.cli.base import OPERATOR, SERVER_HINT, Endpoint, Token, app, err, hub, out
from quiver_hub.credentials import default_endpoint, forget, save


@app.command()
def login(
    token: Annotated[str, typer.Option(prompt=True, hide_input=True, help="a token from your hub's operator")],
    endpoint: Endpoint = None,
) -> None:
    """Check a token against the hub and remember both for later commands."""
    endpoint = endpoint or default_endpoint()
    with HubClient(endpoint, token) as h:
        me = h.whoami()
    path = save(endpoint, token)
    out.print(f"logged in to {endpoint} as {me['user']} ({me['scope']}); saved to {path}")


@app.command()
def logout() -> None:
    """Forget the token `quiver login` saved (revoke it on the hub with `quiver token revoke`)."""
    path = forget()
    out.print(f"logged out: removed {path}" if path else "not logged in")


@app.command()
def whoami(endpoint: Endpoint = None, token: Token = None) -> None:
    """Who the token in use belongs to, its scope and organisations."""
    with hub(endpoint, token) as h:
        me = h.whoami()
    orgs = f", member of {', '.join(me['orgs'])}" if me["orgs"] else ""
    out.print(f"{me['user']} ({me['scope']} token {me['token_id']}) at {h.endpoint}{orgs}")


token_app = typer.Typer(help="Your tokens (and, for operators, anyone's).", no_args_is_help=True)


app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="what it is for (ci, laptop...)")] = "",
    scope: Annotated[str | None, typer.Option(help="read or write (default: read; operators: write)")] = None,
    expires_in_days: Annotated[float | None, typer.Option(help="it stops working after this many days")] = None,
    namespace: Annotated[list[str] | None, typer.Option(help="limit it to this namespace (repeatable)")] = None,
    user: Annotated[str | None, typer.Option(help="operators: a token for this user, on the hub's database")] = None,
    org: Annotated[str | None, typer.Option(help="operators, with --user: the user joins this organisation")] = None,
    init: Annotated[bool, typer.Option("--init", help="operators: create the database if missing")] = False,
    endpoint: Endpoint = None,
    token: Token = None,
) -> None:
    """Make a token for yourself (printed alone on the last line, once). With --user, the operator's
    command: a token for any user, written to the hub's database directly."""
    if user is not None:
        if "token_create" not in OPERATOR:
            err.print(f"[red]error:[/] --user is an operator's command: {escape(SERVER_HINT)}")
            raise typer.Exit(2)
        OPERATOR["token_create"](user, org, scope or "write", name, init)
        return
    expires_at = None
    if expires_in_days is not None:
        expires_at = (datetime.now(UTC) + timedelta(days=expires_in_days)).isoformat()
    with hub(endpoint, token) as h:
        made = h.create_token(name, scope or "read", expires_at, namespace)
    err.print(f"{made['scope']} token {made['id']} ({made['name'] or 'unnamed'}); it is shown only now:")
    print(made["token"])


@token_app.command("list")
def token_list(endpoint: Endpoint = None, token: Token = None) -> None:
    """Your tokens: never their secrets; when each was last used."""
    with hub(endpoint, token) as h:
        rows = h.tokens()
    table = Table("id", "name", "scope", "starts with", "namespaces", "expires", "last used", "revoked")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["name"],
            r["scope"],
            r["hint"] + "...",
            ", ".join(r["namespaces"]) if r["namespaces"] is not None else "all",
            r["expires_at"] or "never",
            r["last_used_at"] or "never",
            r["revoked_at"] or "",
        )
    out.print(table)


@token_app.command("revoke")
def token_revoke(token_id: int, endpoint: Endpoint = None, token: Token = None) -> None:
    """Revoke a token by its id: refused at once, on every hub process."""
    with hub(endpoint, token) as h:
        h.revoke_token(token_id)
    out.print(f"revoked token {token_id}")


@app.command("audit")
def audit_command(
    namespace: Annotated[str | None, typer.Option(help="only this namespace")] = None,
    action: Annotated[str | None, typer.Option(help="only this action")] = None,
    limit: int = 100,
    endpoint: Endpoint = None,
    token: Token = None,
) -> None:
    """The audit log of the namespaces you administer, newest first."""
    with hub(endpoint, token) as h:
        rows = h.audit(namespace, action, limit)
    table = Table("when", "who", "action", "target", "details", "from")
    for e in rows:
        table.add_row(e["at"], e["actor"], e["action"], e["target"], json.dumps(e["details"]), e["address"] or "")
    out.print(table)
