"""The `quiver` operator commands: serve, token, gc, migrate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from hub.settings import Settings
from hub.state import HubState

app = typer.Typer(help="Quiver: a hub for LoRA adapters.", no_args_is_help=True, add_completion=False)
token_app = typer.Typer(help="Manage access tokens (operator commands on the hub's database).", no_args_is_help=True)
app.add_typer(token_app, name="token")
err = Console(stderr=True, soft_wrap=True)  # never break a message across lines


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: QUIVER_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default: QUIVER_PORT or 8000")] = None,
) -> None:
    """Apply migrations and start the hub (QUIVER_HOME, QUIVER_DATABASE_URL)."""
    import uvicorn

    from hub.app import create_app

    settings = Settings()
    HubState.open(settings).close()  # migrate before accepting connections, and fail early if we cannot
    err.print(f"[bold]quiver[/] database {_redact(settings.db_url)}, files under {settings.home.resolve()}")
    uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port)


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option(help="user name (created if new)")],
    org: Annotated[str | None, typer.Option(help="organisation (created if new; the user joins it)")] = None,
    scope: Annotated[str, typer.Option(help="read or write")] = "write",
) -> None:
    """Create a token; it is printed alone on the last line (it cannot be shown again)."""
    from registry.accounts import create_token
    from registry.db import writing
    from registry.errors import RegistryError

    state = HubState.open(Settings())
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


@app.command()
def gc(
    grace: Annotated[float, typer.Option(help="keep unreferenced files younger than this many seconds")] = 3600.0,
) -> None:
    """Remove blobs that no version references, and stale temporary files."""
    from registry.gc import collect_garbage

    state = HubState.open(Settings())
    try:
        report = collect_garbage(state.sessions, state.store, grace_s=grace)
    finally:
        state.close()
    print(
        f"removed {report.rows} unreferenced blobs, {report.orphan_files} orphan files, "
        f"{report.temp_files} stale temporary files"
    )


@app.command()
def migrate() -> None:
    """Apply the database migrations and exit."""
    HubState.open(Settings()).close()
    print("database is up to date")


@app.command("import")
def import_adapter(
    path: Annotated[Path, typer.Argument(help="an adapter folder, or a model repo folder in the HF cache")],
    repo: Annotated[str, typer.Argument(help="namespace/name to publish it as")],
    endpoint: Annotated[str, typer.Option(envvar="QUIVER_ENDPOINT")] = "http://127.0.0.1:8000",
    token: Annotated[str | None, typer.Option(envvar="QUIVER_TOKEN", help="a write token")] = None,
    visibility: Annotated[str | None, typer.Option(help="public or private")] = None,
) -> None:
    """Publish an adapter downloaded from the Hugging Face Hub (a folder, or a snapshot in the HF
    cache), keeping its card's metadata (description, tags, license, pipeline tag)."""
    from registry.cards import card_description
    from registry.validation import ALLOWED_FILES, README_FILE

    folder = _adapter_folder(path)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    keep = [p for p in files if p.name in ALLOWED_FILES]
    for skipped in (p for p in files if p.name not in ALLOWED_FILES):
        err.print(f"skipping {skipped.name}: not part of a LoRA adapter upload")
    data = {"visibility": visibility} if visibility else {}
    readme = folder / README_FILE
    if readme.is_file() and (description := card_description(readme.read_text(encoding="utf-8"))):
        data["description"] = description
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    parts = [("files", (p.name, p.read_bytes())) for p in keep]
    try:
        r = httpx.post(
            f"{endpoint.rstrip('/')}/v1/adapters/{repo}", files=parts, data=data, headers=headers, timeout=600
        )
    except httpx.TransportError as e:
        err.print(f"[red]error:[/] cannot reach the hub at {endpoint}: {e}")
        raise typer.Exit(1) from None
    v = _ok(r)
    print(f"published {v['id']} version {v['version']} (revision {v['revision']}) from {folder}")


@app.command("cluster")
def cluster_command(
    base_model: Annotated[str, typer.Option("--base-model", help="cluster the adapters of this base model")],
    k: Annotated[int | None, typer.Option(help="number of clusters (default: chosen by silhouette)")] = None,
    method: Annotated[str, typer.Option(help="sketch or params")] = "sketch",
    seed: Annotated[int, typer.Option()] = 0,
    merge: Annotated[bool, typer.Option("--merge", help="publish one averaged adapter per cluster")] = False,
    rank: Annotated[int | None, typer.Option(help="with --merge: compress each to this rank")] = None,
    endpoint: Annotated[str, typer.Option(envvar="QUIVER_ENDPOINT")] = "http://127.0.0.1:8000",
    token: Annotated[str | None, typer.Option(envvar="QUIVER_TOKEN")] = None,
) -> None:
    """Group the adapters you can see by their parameters (MBC) and show the clusters."""
    import time

    from rich.progress import Progress
    from rich.table import Table

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=endpoint.rstrip("/"), headers=headers, timeout=600) as c:
        body = {"base_model": base_model, "method": method, "seed": seed, **({"k": k} if k else {})}
        run = _ok(c.post("/v1/clusters", json=body))
        if run["status"] == "running":
            with Progress(console=err, transient=True) as bar:
                task = bar.add_task(f"clustering {run['params']['adapters']} adapters", total=1.0)
                while run["status"] == "running":
                    time.sleep(0.5)
                    run = _ok(c.get(f"/v1/clusters/{run['id']}"))
                    bar.update(task, completed=run["progress"])
        if run["status"] == "failed":
            err.print(f"[red]cluster run {run['id']} failed:[/] {run['error']}")
            raise typer.Exit(1)
        silhouette = f"{run['silhouette']:.3f}" if run["silhouette"] is not None else "-"
        table = Table(title=f"run {run['id']}: {run['method']}, k={run['k']}, silhouette {silhouette}")
        for column in ("cluster", "adapter", "version", "task", "distance"):
            table.add_column(column)
        for cluster in run["clusters"]:
            for i, m in enumerate(cluster["members"]):
                table.add_row(
                    str(cluster["index"]) if i == 0 else "",
                    m["id"],
                    str(m["version"]),
                    m["task"] or "",
                    f"{m['distance']:.3f}",
                    end_section=i == len(cluster["members"]) - 1,
                )
        Console(soft_wrap=True).print(table)
        if merge:
            published = _ok(c.post(f"/v1/clusters/{run['id']}/merge", json={"rank": rank} if rank else {}))
            for v in published:
                print(f"published {v['id']} version {v['version']} (rank {v['rank']})")


def _ok(response: httpx.Response) -> dict:
    """The JSON of a successful answer; a hub error is printed and ends the command."""
    if response.is_success:
        return response.json()
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text
    err.print(f"[red]error {response.status_code}:[/] {message}")
    raise typer.Exit(1)


def _adapter_folder(path: Path) -> Path:
    """The folder itself, or for an HF cache repo folder (models--ns--name) the snapshot refs/main names."""
    if (path / "adapter_config.json").is_file():
        return path
    snapshots = path / "snapshots"
    if snapshots.is_dir():
        ref = path / "refs" / "main"
        if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
            return snapshots / ref.read_text().strip()
        candidates = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime)
        if candidates:
            return candidates[-1]
    err.print(f"[red]error:[/] {path} holds no adapter_config.json (nor is it a model folder of the HF cache)")
    raise typer.Exit(2)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
