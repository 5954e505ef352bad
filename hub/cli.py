"""The hub's operator commands (serve, token create, gc, migrate), which work on the hub's database and
files directly. They join the `quiver` command (client.cli) through the `quiver.commands` entry point."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from quiver_hub.hub.services import Services
from quiver_hub.hub.settings import Settings

token_app = typer.Typer(help="Manage access tokens (operator commands on the hub's database).", no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True)  # never break a message across lines


def register(app: typer.Typer) -> None:
    """Add the operator commands to the `quiver` command."""
    app.command()(serve)
    app.add_typer(token_app, name="token")
    app.command()(gc)
    app.command()(migrate)


def serve(
    host: Annotated[str | None, typer.Option(help="default: QUIVER_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default: QUIVER_PORT or 8000")] = None,
) -> None:
    """Apply migrations and start the hub (QUIVER_HOME, QUIVER_DATABASE_URL)."""
    import uvicorn

    from quiver_hub.hub.app import create_app
    from quiver_hub.hub.server import server_config

    settings = Settings()
    Services.open(settings).close()  # migrate before accepting connections, and fail early if we cannot
    err.print(f"[bold]quiver[/] database {_redact(settings.db_url)}, files under {settings.home.resolve()}")
    uvicorn.Server(server_config(create_app(settings), settings, host or settings.host, port or settings.port)).run()


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option(help="user name (created if new)")],
    org: Annotated[str | None, typer.Option(help="organisation (created if new; the user joins it)")] = None,
    scope: Annotated[str, typer.Option(help="read or write")] = "write",
) -> None:
    """Create a token; it is printed alone on the last line (it cannot be shown again)."""
    from quiver_hub.registry.accounts import create_token
    from quiver_hub.registry.db import writing
    from quiver_hub.registry.errors import RegistryError

    state = Services.open(Settings())
    try:
        with writing(state.sessions) as session:
            token = create_token(session, user=user, scope=scope, org=org)
            session.commit()
    except RegistryError as e:
        err.print(f"[red]error:[/] {e.message}")
        raise typer.Exit(2) from None
    finally:
        state.close()
    err.print(f"{scope} token for user {user}" + (f" (member of {org})" if org else "") + ":")
    print(token)


def gc(
    grace: Annotated[float, typer.Option(help="keep unreferenced files younger than this many seconds")] = 3600.0,
) -> None:
    """Remove blobs that no version references, and stale temporary files."""
    from quiver_hub.registry.gc import collect_garbage

    state = Services.open(Settings())
    try:
        report = collect_garbage(state.sessions, state.store, grace_s=grace)
    finally:
        state.close()
    print(
        f"removed {report.rows} unreferenced blobs, {report.orphan_files} orphan files, "
        f"{report.temp_files} stale temporary files"
    )


def migrate() -> None:
    """Apply the database migrations and exit."""
    Services.open(Settings()).close()
    print("database is up to date")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
