"""The `quiver` app: its options and consoles, the hub a command talks to, and `main`, the one path from a hub
error or a bad input to the exit code. The hub's operator commands (serve, token, gc, migrate) join through the
`quiver.commands` entry point when the server extras are installed; without them those names answer with the
extra to install."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from quiver_hub.api import HubClient
from quiver_hub.errors import HubError

app = typer.Typer(help="Quiver: a hub for LoRA adapters.", no_args_is_help=True, add_completion=False)


def show_version(value: bool) -> None:
    if value:
        from quiver_hub import __version__

        print(f"quiver {__version__}")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Quiver: a hub for LoRA adapters."""


out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)  # never break a message across lines
Endpoint = Annotated[str | None, typer.Option(envvar="QUIVER_ENDPOINT", help="the hub (default: from quiver login)")]
Token = Annotated[str | None, typer.Option(envvar="QUIVER_TOKEN", help="a token (default: from quiver login)")]


def hub(endpoint: str | None, token: str | None) -> HubClient:
    return HubClient(endpoint, token)


OPERATOR: dict[str, Callable] = {}  # the server extras lend the operator's commands here (quiver_hub.hub.commands)
SERVER_COMMANDS = ("serve", "gc", "migrate", "admin")
SERVER_HINT = "pip install 'quiver-hub[server]'"


def needs_server(name: str) -> None:
    def command(ctx: typer.Context) -> None:
        hint = escape(SERVER_HINT)
        err.print(f"[red]error:[/] `quiver {name}` is one of the hub's commands, which need the server extras: {hint}")
        raise typer.Exit(2)

    command.__doc__ = "(needs the server extras: pip install 'quiver-hub[server]')"
    app.command(name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(command)


def main() -> None:
    loaded = False
    for plugin in entry_points(group="quiver.commands"):
        try:
            plugin.load()(app, OPERATOR)
            loaded = True
        except ImportError:  # the server extras are not installed: client commands only
            pass
    if not loaded:
        for name in SERVER_COMMANDS:
            needs_server(name)
    if os.environ.get("QUIVER_DEBUG"):
        app()
        return
    try:
        app()
    except HubError as e:  # the hub's answer, from any command: one path to the exit code
        err.print(f"[red]error{f' {e.status}' if e.status else ''}:[/] {escape(e.message)}", highlight=False)
        raise SystemExit(1) from None
    except (ValueError, OSError) as e:  # what a user can act on: one line, never a traceback
        err.print(f"[red]error:[/] {escape(str(e))} (QUIVER_DEBUG=1 shows where)", highlight=False)
        raise SystemExit(1) from None
