"""The `quiver` command. Client commands live here; the hub's operator commands (serve, token, gc,
migrate) join through the `quiver.commands` entry point when the server extras are installed; without
them those names answer with the extra to install."""

from __future__ import annotations

import json
import os
import subprocess
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from quiver_hub.api import Hub, upload_paths
from quiver_hub.credentials import default_endpoint, forget, save
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


def hub(endpoint: str | None, token: str | None) -> Hub:
    return Hub(endpoint, token)


@app.command()
def login(
    token: Annotated[str, typer.Option(prompt=True, hide_input=True, help="a token from your hub's operator")],
    endpoint: Endpoint = None,
) -> None:
    """Check a token against the hub and remember both for later commands."""
    endpoint = endpoint or default_endpoint()
    with Hub(endpoint, token) as h:
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


BaseModelOption = Annotated[
    str | None, typer.Option("--base-model", help="the base model's Hub id, when the config names a local path")
]
Exclude = Annotated[
    list[str] | None, typer.Option("--exclude", help="leave out files matching this pattern (repeatable): '*.bin'")
]


@app.command()
def push(
    folder: Annotated[Path, typer.Argument(help="a PEFT adapter folder (a training output folder too)")],
    repo: Annotated[str, typer.Argument(help="namespace/name")],
    description: str | None = None,
    task: str | None = None,
    tags: Annotated[str | None, typer.Option(help="comma separated")] = None,
    visibility: Annotated[str | None, typer.Option(help="public or private")] = None,
    license: Annotated[str | None, typer.Option("--license", help="e.g. apache-2.0 (default: the card's)")] = None,  # noqa: A002
    example: Annotated[
        list[str] | None, typer.Option("--example", help="an input the adapter is for (repeatable): routing reads them")
    ] = None,
    base_model: BaseModelOption = None,
    exclude: Exclude = None,
    endpoint: Endpoint = None,
    token: Token = None,
) -> None:
    """Publish a folder as the next version of namespace/name: every file in it (the hub keeps tokenizer
    files and the like beside the adapter), except what --exclude leaves out."""
    v = upload(
        folder,
        repo,
        endpoint,
        token,
        exclude or [],
        description=description,
        task=task,
        visibility=visibility,
        license=license,
        examples=example or None,
        base_model=base_model,
        tags=[t.strip() for t in tags.split(",") if t.strip()] if tags else None,
    )
    out.print(f"published {v['id']} version {v['version']} (revision {v['revision']})")


def upload(folder: Path, repo: str, endpoint: str | None, token: str | None, exclude: list[str], **meta: Any) -> dict:
    """Push a folder, saying what goes up; a hub error ends the command with its message."""
    try:
        paths = upload_paths(folder, exclude)
    except FileNotFoundError as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    size = sum(p.stat().st_size for p in paths.values())
    err.print(f"uploading {len(paths)} files ({size / 1e6:.1f} MB): {', '.join(paths)}")
    columns = (TextColumn("uploading {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    try:
        with (
            hub(endpoint, token) as h,
            Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar,
        ):
            task = bar.add_task(repo, total=size)
            with warnings.catch_warnings(record=True) as notes:  # what the push did for you, or asks you to check
                warnings.simplefilter("always", UserWarning)
                version = h.push(
                    folder, repo, exclude=exclude, progress=lambda sent, _: bar.update(task, completed=sent), **meta
                )
    except ValueError as e:  # a pickled adapter_model.bin that is not plain tensors
        err.print(f"[red]error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None
    for note in notes:
        err.print(f"[yellow]note:[/] {escape(str(note.message))}")
    return version


@app.command()
def pull(
    spec: Annotated[str, typer.Argument(help="namespace/name\\[@revision or @number]")],
    endpoint: Endpoint = None,
    token: Token = None,
) -> None:
    """Download a version into the local cache (QUIVER_CACHE) and print its folder."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(path: str, done: int, total: int) -> None:
            if path not in tasks:
                tasks[path] = bar.add_task(path, total=total)
            bar.update(tasks[path], completed=done)

        with hub(endpoint, token) as h:
            folder = h.pull(spec, progress=progress)
    print(folder)


@app.command()
def search(
    query: str,
    base_model: str | None = None,
    task: Annotated[str | None, typer.Option(help="only adapters of this task")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="only adapters with this tag (repeatable: all of them)")] = None,
    limit: int = 10,
    endpoint: Endpoint = None,
    token: Token = None,
) -> None:
    """Find adapters by meaning."""
    with hub(endpoint, token) as h:
        results = h.search(query, base_model=base_model, task=task, tags=tag or (), limit=limit)
    table = Table("score", "adapter", "version", "base model", "task")
    for r in results:
        table.add_row(f"{r['score']:.3f}", r["id"], str(r["version"]), r["base_model"], r["task"] or "")
    out.print(table if results else "no adapters match")


@app.command("list")
def list_command(
    base_model: Annotated[str | None, typer.Option(help="only adapters of this base model")] = None,
    task: Annotated[str | None, typer.Option(help="only adapters of this task")] = None,
    tag: Annotated[str | None, typer.Option(help="only adapters with this tag")] = None,
    namespace: Annotated[str | None, typer.Option(help="only this user's or organisation's")] = None,
    endpoint: Endpoint = None,
    token: Token = None,
) -> None:
    """Every adapter you can see, newest first, with its latest version."""
    filters = {"base_model": base_model, "task": task, "tag": tag, "namespace": namespace}
    with hub(endpoint, token) as h:
        adapters = h.list(**{k: v for k, v in filters.items() if v})
    table = Table("adapter", "latest", "base model", "task", "visibility")
    for a in adapters:
        latest = a.get("latest") or {}
        table.add_row(a["id"], str(latest.get("version", "-")), a["base_model"], a.get("task") or "", a["visibility"])
    out.print(table if adapters else "no adapters")


@app.command()
def delete(
    spec: Annotated[str, typer.Argument(help="namespace/name (every version) or namespace/name@version")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
    endpoint: Endpoint = None,
    token: Token = None,
) -> None:
    """Delete an adapter, or one of its versions (the versions' numbers are never reused)."""
    if not yes:
        typer.confirm(f"delete {spec}?", abort=True)
    with hub(endpoint, token) as h:
        deleted = h.delete(spec)
    names = [f"{d['id']}@{d['version']}" for d in deleted]
    out.print(f"deleted {', '.join(names) or 'nothing'}")


cache_app = typer.Typer(help="The local cache of pulled adapters (QUIVER_CACHE).", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("ls")
def cache_ls() -> None:
    """Every version in the cache: adapter, version, revision, files and size."""
    from quiver_hub.cache import Cache, versions

    cache = Cache()
    found = versions(cache)
    table = Table("adapter", "version", "revision", "files", "size")
    for v in found:
        table.add_row(v.repo, str(v.number or "?"), v.revision[:12], str(v.files), f"{v.size / 1e6:.1f} MB")
    out.print(table if found else f"nothing cached in {cache.root}")


@cache_app.command("verify")
def cache_verify() -> None:
    """Hash every cached file again; a file that no longer matches is removed (the next pull fetches it)."""
    from quiver_hub.cache import Cache, verify

    checked, bad = verify(Cache())
    for sha in bad:
        err.print(f"[red]corrupt, removed:[/] {sha}")
    out.print(f"{checked} files checked, {len(bad)} corrupt")
    if bad:
        raise typer.Exit(1)


@cache_app.command("prune")
def cache_prune(
    repo: Annotated[str | None, typer.Argument(help="namespace/name: remove its versions first")] = None,
) -> None:
    """Remove files no cached version uses and unfinished downloads (with REPO, that adapter's versions)."""
    from quiver_hub.cache import Cache, prune

    out.print(f"freed {prune(Cache(), repo) / 1e6:.1f} MB")


tag_app = typer.Typer(help="Tags: names for versions.", no_args_is_help=True)
app.add_typer(tag_app, name="tag")


@tag_app.command("create")
def tag_create(
    spec: Annotated[str, typer.Argument(help="namespace/name\\[@version] (default: the latest)")],
    tag: Annotated[str, typer.Argument(help="the tag, e.g. v1.0")],
    message: str = "",
    endpoint: Endpoint = None,
    token: Token = None,
) -> None:
    """Name a version with a tag (ns/name@v1.0 then pulls it)."""
    with hub(endpoint, token) as h:
        made = h.tag(spec, tag, message)
    out.print(f"tagged {made['version']['id']} version {made['version']['version']} as {made['name']}")


@tag_app.command("delete")
def tag_delete(
    repo: Annotated[str, typer.Argument(help="namespace/name")],
    tag: str,
    endpoint: Endpoint = None,
    token: Token = None,
) -> None:
    """Remove a tag (the version stays)."""
    with hub(endpoint, token) as h:
        h.untag(repo, tag)
    out.print(f"removed tag {tag} of {repo}")


@app.command()
def info(
    spec: Annotated[str, typer.Argument(help="namespace/name\\[@revision]")],
    endpoint: Endpoint = None,
    token: Token = None,
) -> None:
    """Show an adapter (or one version with @rev)."""
    with hub(endpoint, token) as h:
        data = h.info(spec)
    table = Table(show_header=False)
    for key, value in data.items():
        if key in ("adapter_config",):
            continue
        if key == "files":
            value = ", ".join(f"{f['path']} ({f['size']} B)" for f in value)
        table.add_row(key, str(value))
    out.print(table)


@app.command("import")
def import_adapter(
    path: Annotated[Path, typer.Argument(help="an adapter folder, or a model repo folder in the HF cache")],
    repo: Annotated[str, typer.Argument(help="namespace/name to publish it as")],
    visibility: Annotated[str | None, typer.Option(help="public or private")] = None,
    base_model: BaseModelOption = None,
    exclude: Exclude = None,
    endpoint: Endpoint = None,
    token: Token = None,
) -> None:
    """Publish an adapter downloaded from the Hugging Face Hub (a folder, or a snapshot in the HF cache),
    keeping its card's metadata (the hub reads description, tags, license, pipeline tag and base model)."""
    folder = adapter_folder(path)
    v = upload(folder, repo, endpoint, token, exclude or [], visibility=visibility, base_model=base_model)
    out.print(f"published {v['id']} version {v['version']} (revision {v['revision']}) from {folder}")


def adapter_folder(path: Path) -> Path:
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


@app.command("cluster")
def cluster_command(
    base_model: Annotated[str, typer.Option("--base-model", help="cluster the adapters of this base model")],
    k: Annotated[int | None, typer.Option(help="number of clusters (default: chosen by silhouette)")] = None,
    method: Annotated[str, typer.Option(help="outputs-middle, outputs, sketch or params")] = "outputs-middle",
    seed: Annotated[int, typer.Option()] = 0,
    merge: Annotated[bool, typer.Option("--merge", help="publish one averaged adapter per cluster")] = False,
    rank: Annotated[int | None, typer.Option(help="with --merge: compress each to this rank")] = None,
    endpoint: Endpoint = None,
    token: Token = None,
) -> None:
    """Group the adapters you can see by their parameters (MBC) and show the clusters."""
    with hub(endpoint, token) as h:
        run = h.cluster(base_model, k=k, method=method, seed=seed)
        if run["status"] == "running":
            with Progress(console=err, transient=True) as bar:
                task = bar.add_task(f"clustering {run['params']['adapters']} adapters", total=1.0)
                while run["status"] == "running":
                    time.sleep(0.5)
                    run = h.cluster_run(run["id"])
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
        out.print(table)
        if merge:
            for v in h.merge_clusters(run["id"], rank):
                out.print(f"published {v['id']} version {v['version']} (rank {v['rank']})")


token_app = typer.Typer(help="Your tokens (and, for operators, anyone's).", no_args_is_help=True)
app.add_typer(token_app, name="token")
OPERATOR: dict[str, Callable] = {}  # the server extras lend the operator's commands here (quiver_hub.hub.cli)


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


@app.command()
def gateway(
    engine: Annotated[str, typer.Option(help="the serving engine's URL, e.g. http://127.0.0.1:8001 (vLLM)")],
    base_model: Annotated[str, typer.Option(help="the hub's name of the model the engine serves")],
    engine_model: Annotated[
        str | None, typer.Option(help="the name the engine serves it under (default: --base-model)")
    ] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8090,
    endpoint: Endpoint = None,
    token: Token = None,
) -> None:
    """An OpenAI-compatible front: model "quiver:auto" picks the adapter for each chat from the hub, then
    the request goes to the engine under that adapter's name (quiver_hub.gateway)."""
    try:
        import uvicorn

        from quiver_hub.gateway import create_gateway
    except ImportError as e:
        err.print(f"quiver gateway needs the server extras ({e.name} is missing): pip install 'quiver-hub[server]'")
        raise typer.Exit(1) from None
    app_ = create_gateway(engine, hub(endpoint, token), base_model, engine_model)
    err.print(f"quiver gateway on http://{host}:{port} -> {engine} ({base_model})")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


kernel_app = typer.Typer(help="The fused merge kernel (compiled for this CPU on first use).", no_args_is_help=True)
app.add_typer(kernel_app, name="kernel")


@kernel_app.command("build")
def kernel_build() -> None:
    """Compile the merge kernel now (for an image that has no compiler at run time) and print its path."""
    from quiver_hub import fused

    try:
        path = fused.build()
    except (OSError, subprocess.SubprocessError) as e:
        detail = (getattr(e, "stderr", None) or str(e)).strip()
        err.print(f"[red]error:[/] could not build the kernel with {' '.join(fused._compiler())!r}: {detail}")
        raise typer.Exit(1) from None
    print(path)


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
