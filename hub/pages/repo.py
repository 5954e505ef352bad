"""The pages of one adapter's files and history, as huggingface.co lays them out:

    /{ns}/{name}/tree/{rev}          every file of a version, with its size and sha256
    /{ns}/{name}/blob/{rev}/{path}   one file: text shown safely, a safetensors file as a table of its
                                     tensors (read from its header alone), an image, or a download link
    /{ns}/{name}/commits/{rev}       the versions up to that one, newest first

Visibility as everywhere (registry.catalogue.reads): what the viewer may not see is a 404, exactly like what does
not exist.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from quiver_hub.hub.deps import StateDep
from quiver_hub.hub.pages.web import page, page_principal
from quiver_hub.registry.catalogue import files, reads
from quiver_hub.registry.errors import NotFound, RegistryError
from quiver_hub.registry.intake.safetensors_header import read_header

router = APIRouter(include_in_schema=False)
MAX_SHOWN_TEXT = 512 * 1024  # a text file's first bytes shown on its page; the rest is a download away


def not_found(request: Request, what: str) -> HTMLResponse:
    return page(request, "error.html", 404, heading="404 Not Found", message=f"{what} was not found.")


def resolve(session: Session, request: Request, state: StateDep, namespace: str, name: str, rev: str):  # noqa: ANN201
    """The adapter and version the path names, as the viewer may see them (NotFound otherwise)."""
    adapter = reads.get_adapter(session, page_principal(request, state), namespace, name)
    try:
        return adapter, reads.get_version(session, adapter, "latest" if rev == "main" else rev)
    except RegistryError:
        raise NotFound(f"{namespace}/{name}@{rev}") from None


@router.get("/{namespace}/{name}/tree/{rev}", response_class=HTMLResponse)
def tree(request: Request, state: StateDep, namespace: str, name: str, rev: str) -> Response:
    with state.sessions() as session:
        try:
            adapter, version = resolve(session, request, state, namespace, name, rev)
        except NotFound as e:
            if e.moved_to:
                return RedirectResponse(f"/{e.moved_to}/tree/{rev}", status_code=307)
            return not_found(request, f"{namespace}/{name}@{rev}")
        return page(request, "tree.html", adapter=adapter, version=version)


@router.get("/{namespace}/{name}/blob/{rev}/{path:path}", response_class=HTMLResponse)
def blob(request: Request, state: StateDep, namespace: str, name: str, rev: str, path: str) -> Response:
    with state.sessions() as session:
        try:
            adapter, version = resolve(session, request, state, namespace, name, rev)
        except NotFound:
            return not_found(request, f"{namespace}/{name}@{rev}")
        entry = version.file(path)
        if entry is None:
            return not_found(request, f"{path} in {namespace}/{name}@{rev}")
        kind, text, tensors = files.kind(path), None, None
        stored = state.store.local_path(entry.sha256)
        if path.endswith(".safetensors"):
            with stored.open("rb") as f:
                header, _ = read_header(f, entry.size, path)
            tensors = sorted(header.values(), key=lambda t: t.name)
        elif kind in ("text", "adapter"):
            with stored.open("rb") as f:
                text = f.read(MAX_SHOWN_TEXT).decode("utf-8", errors="replace")
        return page(
            request,
            "blob.html",
            adapter=adapter,
            version=version,
            entry=entry,
            kind=kind,
            text=text,
            cut=entry.size > MAX_SHOWN_TEXT,
            tensors=tensors,
            download=f"/v1/adapters/{adapter.repo_id}/versions/{version.revision}/files/{path}",
        )


@router.get("/{namespace}/{name}/commits/{rev}", response_class=HTMLResponse)
def commits(request: Request, state: StateDep, namespace: str, name: str, rev: str) -> Response:
    with state.sessions() as session:
        try:
            adapter, version = resolve(session, request, state, namespace, name, rev)
        except NotFound:
            return not_found(request, f"{namespace}/{name}@{rev}")
        history = [v for v in reversed(adapter.versions) if v.number <= version.number]
        return page(request, "commits.html", adapter=adapter, version=version, history=history)
