"""Commands on adapters: push, pull, search, list, info, delete, import from the Hugging Face cache, tags, clusters."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from quiver_hub.cli.base import Endpoint, Token, app, err, hub, out
from quiver_hub.upload_files import upload_paths

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
