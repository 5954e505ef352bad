"""The hub's operator commands, which work on the hub's database and files directly: `quiver serve`,
`migrate`, `gc` and `quiver admin ...` (users, organisations, tokens, the audit log). They join the
`quiver` command (quiver_hub.cli) through the `quiver.commands` entry point, and lend it the operator's
`quiver token create --user NAME`.

Every command but serve and migrate says which database it uses, and refuses to run against one that
does not exist yet (a wrong QUIVER_HOME would otherwise create an empty one beside the hub's) unless
told to create it with --init.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from quiver_hub.hub.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:  # the hub's services (torch, FAISS, the database) load in the commands that use them
    from quiver_hub.hub.services import Services

admin_app = typer.Typer(
    help="Operator commands on the hub's database: users, organisations, tokens, the audit log.",
    no_args_is_help=True,
)
err = Console(stderr=True, soft_wrap=True)  # never break a message across lines
Init = Annotated[bool, typer.Option("--init", help="create the database if it does not exist yet")]


blobs_app = typer.Typer(help="The blob store (operator commands).", no_args_is_help=True)


def operator_settings() -> Settings:
    """The hub's settings, or one line per wrong QUIVER_ variable and exit status 2 (never a traceback)."""
    try:
        return load_settings()
    except SettingsError as e:
        for line in str(e).splitlines():
            err.print(f"quiver: {line}", markup=False, highlight=False)
        raise typer.Exit(2) from None


def register(app: typer.Typer, hooks: dict[str, Callable] | None = None) -> None:
    """Add the operator commands to the `quiver` command; `hooks` lends it the operator's token create."""
    app.command()(serve)
    app.command()(gc)
    app.command()(migrate)
    app.add_typer(admin_app, name="admin")
    app.add_typer(blobs_app, name="blobs")
    if hooks is not None:
        hooks["token_create"] = operator_token


def serve(
    host: Annotated[str | None, typer.Option(help="default: QUIVER_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default: QUIVER_PORT or 8000")] = None,
) -> None:
    """Apply migrations and start the hub (QUIVER_HOME, QUIVER_DATABASE_URL)."""
    import torch
    import uvicorn

    from quiver_hub.hub.app import create_app
    from quiver_hub.hub.server import server_config

    settings = operator_settings()
    # torch's own thread pool would fight the server's threads for the same cores and slow every publish
    # on a busy hub several times: torch runs on one thread, and a publish's analysis splits its modules
    # between QUIVER_ANALYSIS_THREADS threads. This is the process's entry point, so it sets the
    # process-wide pools (an app embedded elsewhere does not).
    torch.set_num_threads(1)
    from quiver_hub.hub.services import Services
    from quiver_hub.registry.intake.analysis import use_threads
    from quiver_hub.registry.memory import map_large_blocks

    use_threads(settings.analysis_threads)
    map_large_blocks()  # large temporaries go back to the system when freed (registry/memory.py)

    Services.open(settings).close()  # migrate before accepting connections, and fail early if we cannot
    err.print(f"[bold]quiver[/] database {redact(settings.db_url)}, files under {settings.home.resolve()}")
    uvicorn.Server(server_config(create_app(settings), settings, host or settings.host, port or settings.port)).run()


def database_exists(settings: Settings) -> bool:
    """Whether the database the settings name holds Quiver's schema already."""
    if settings.database_url is None:
        return Path(settings.db_url.split("///", 1)[1]).is_file()
    from sqlalchemy import inspect

    from quiver_hub.registry.db import make_engine

    engine = make_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            return inspect(conn).has_table("alembic_version")
    finally:
        engine.dispose()


@contextmanager
def operator_services(init: bool = False) -> Iterator[Services]:
    """The hub's services for an operator command, after saying which database it works on."""
    settings = operator_settings()
    err.print(f"database {redact(settings.db_url)}")
    if not init and not database_exists(settings):
        err.print(
            "[red]error:[/] there is no Quiver database there yet. Run this where the hub runs, with its "
            "QUIVER_HOME or QUIVER_DATABASE_URL; or pass --init to create one."
        )
        raise typer.Exit(2)
    from quiver_hub.hub.services import Services

    services = Services.open(settings)
    try:
        yield services
    finally:
        services.close()


@contextmanager
def reported() -> Iterator[None]:
    """A registry error ends the command with its message."""
    from quiver_hub.registry.errors import RegistryError

    try:
        yield
    except RegistryError as e:
        err.print(f"[red]error:[/] {e.message}")
        raise typer.Exit(2) from None


def operator_token(user: str, org: str | None, scope: str, name: str, init: bool) -> None:
    """A token for `user` (created if new), printed alone on the last line."""
    from quiver_hub.registry.accounts.tokens import token_for_user
    from quiver_hub.registry.db import writing

    with operator_services(init) as services, reported(), writing(services.sessions) as session:
        token = token_for_user(session, user=user, scope=scope, org=org, name=name)
        session.commit()
    err.print(f"{scope} token for user {user}" + (f" (member of {org})" if org else "") + ":")
    print(token)


@admin_app.command("create-token")
def admin_create_token(
    user: Annotated[str, typer.Option(help="user name (created if new)")],
    org: Annotated[str | None, typer.Option(help="organisation (created if new, the user its admin)")] = None,
    scope: Annotated[str, typer.Option(help="read or write")] = "write",
    name: Annotated[str, typer.Option(help="what the token is for")] = "",
    init: Init = False,
) -> None:
    """A token for a user; printed alone on the last line (it cannot be shown again)."""
    operator_token(user, org, scope, name, init)


@admin_app.command("create-user")
def admin_create_user(name: str, init: Init = False) -> None:
    """A new user (with no token yet: create-token makes one)."""
    from quiver_hub.registry.accounts import users
    from quiver_hub.registry.db import writing

    with operator_services(init) as services, reported(), writing(services.sessions) as session:
        users.create_user(session, name)
        session.commit()
    print(f"created user {name}")


@admin_app.command("create-org")
def admin_create_org(name: str, admin: Annotated[str, typer.Option(help="its first admin, a user")]) -> None:
    """A new organisation with one admin."""
    from quiver_hub.registry.accounts import users
    from quiver_hub.registry.db import writing

    with operator_services() as services, reported(), writing(services.sessions) as session:
        users.create_org_for(session, name, admin)
        session.commit()
    print(f"created organisation {name}, admin {admin}")


@admin_app.command("disable-user")
def admin_disable_user(name: str) -> None:
    """Disable a user: every token of theirs is refused from the next request on, on every hub process."""
    from quiver_hub.registry.accounts import users
    from quiver_hub.registry.db import writing

    with operator_services() as services, reported(), writing(services.sessions) as session:
        users.disable_user(session, name)
        session.commit()
    print(f"disabled user {name}")


@admin_app.command("revoke-token")
def admin_revoke_token(token_id: int) -> None:
    """Revoke any token, by its id (GET /v1/tokens lists a user's)."""
    from quiver_hub.registry.accounts import tokens

    with operator_services() as services, reported():
        row = tokens.revoke_token(services.sessions, None, token_id)
    print(f"revoked token {row.id} ({row.name or 'unnamed'}) of user {row.user.name}")


@admin_app.command("audit")
def admin_audit(
    namespace: Annotated[str | None, typer.Option(help="only this namespace")] = None,
    action: Annotated[str | None, typer.Option(help="only this action (publish, delete, token.revoke...)")] = None,
    limit: int = 100,
) -> None:
    """Every namespace's audit events, newest first, one JSON object a line."""
    from quiver_hub.registry.accounts import audit

    with operator_services() as services, reported(), services.sessions() as session:
        for e in audit.events(session, None, namespace, action, limit=limit):
            print(
                json.dumps(
                    {
                        "id": e.id,
                        "at": e.at.isoformat(),
                        "actor": e.actor,
                        "action": e.action,
                        "namespace": e.namespace,
                        "target": e.target,
                        "details": e.details,
                        "address": e.address,
                    }
                )
            )


def gc(
    grace: Annotated[float, typer.Option(help="keep unreferenced files younger than this many seconds")] = 3600.0,
) -> None:
    """Remove blobs that no version references, and stale temporary files."""
    from quiver_hub.registry.storage.gc import collect_garbage

    with operator_services() as services:
        report = collect_garbage(services.sessions, services.store, grace_s=grace)
    print(
        f"removed {report.rows} unreferenced blobs, {report.orphan_files} orphan files, "
        f"{report.temp_files} stale temporary files, {report.abandoned_uploads} abandoned uploads"
    )


@blobs_app.command("copy")
def blobs_copy(
    to: Annotated[str, typer.Option("--to", help="the bucket: s3://bucket/prefix")],
    endpoint_url: Annotated[str | None, typer.Option(help="an S3-compatible endpoint (MinIO...)")] = None,
    region: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Copy every blob the database references from this hub's local store to a bucket, reading each
    object back to verify its sha256. Then set QUIVER_BLOB_URL (and the S3 settings) and restart."""
    from sqlalchemy import func, select

    from quiver_hub.registry.models import Blob
    from quiver_hub.registry.storage.s3 import S3BlobStore

    with operator_services() as services:
        if services.store.name != "local":
            err.print("[red]error:[/] the hub's store is not the local directory; nothing to copy from")
            raise typer.Exit(2)
        target = S3BlobStore(to, services.settings.blob_root, endpoint_url=endpoint_url, region=region)
        with services.sessions() as session:
            total = session.scalar(select(func.count()).select_from(Blob))
            copied = size = 0
            for blob in session.scalars(select(Blob).order_by(Blob.sha256).execution_options(yield_per=500)):
                target.put_file(blob.sha256, services.store.local_path(blob.sha256), blob.size)
                if not target.verify(blob.sha256):
                    err.print(f"[red]error:[/] {blob.sha256} did not read back intact from {to}")
                    raise typer.Exit(1)
                copied, size = copied + 1, size + blob.size
                err.print(f"\r{copied}/{total} blobs, {size / 1e6:.1f} MB", end="")
    err.print()
    print(f"copied and verified {copied} blobs ({size} bytes) to {to}")


def migrate() -> None:
    """Apply the database migrations and exit."""
    from quiver_hub.hub.services import Services

    Services.open(operator_settings()).close()
    print("database is up to date")


def redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
