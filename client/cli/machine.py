"""Commands on this machine: the local cache, the fused merge kernel, the routing gateway in front of an engine."""

from __future__ import annotations

import subprocess
from typing import Annotated

import typer
from rich.table import Table

from quiver_hub.cli.base import Endpoint, Token, app, err, hub, out

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
    the request goes to the engine under that adapter's name (quiver_hub.serving.gateway)."""
    try:
        import uvicorn

        from quiver_hub.serving.gateway import create_gateway
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
    from quiver_hub.local import fused

    try:
        path = fused.build()
    except (OSError, subprocess.SubprocessError) as e:
        detail = (getattr(e, "stderr", None) or str(e)).strip()
        err.print(f"[red]error:[/] could not build the kernel with {' '.join(fused._compiler())!r}: {detail}")
        raise typer.Exit(1) from None
    print(path)
