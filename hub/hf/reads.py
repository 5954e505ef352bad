"""The Hugging Face Hub protocol, read side: downloads (resolve), model info, file trees and paths, the
model list and whoami, so huggingface_hub, PEFT, transformers and the `hf` command line read from Quiver
with HF_ENDPOINT pointing here (docs/huggingface-protocol.md).

Every decision (names, visibility) is the registry's, exactly as for /v1. Errors use the Hub's shape:
{"error": "<message>"} with X-Error-Code (hub.errors does that for routes tagged HF_TAG). A repo's
`main` is its latest version; a revision may also be a revision id, a version number or a tag.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import JSONResponse

from quiver_hub.hub.deps import PrincipalDep, SessionDep, StateDep
from quiver_hub.hub.downloads import blob_response
from quiver_hub.hub.error_handlers import HF_TAG
from quiver_hub.hub.hf.protocol import EMPTY_COMMIT, entry_not_found, file_entry, model_json, version_for
from quiver_hub.registry import limits
from quiver_hub.registry.accounts.access import user_orgs
from quiver_hub.registry.catalogue import reads
from quiver_hub.registry.errors import NotFound, Unauthorized
from quiver_hub.registry.models import Version

router = APIRouter(tags=[HF_TAG])
MAX_LIST = 1000

RESOLVE = "/{namespace}/{name}/resolve/{revision}/{path:path}"


@router.head(RESOLVE, operation_id="hf_resolve_head", summary="File metadata (headers only), as the Hub answers")
@router.get(RESOLVE, operation_id="hf_resolve", summary="Download a file, as the Hub serves it")
def resolve(
    namespace: str,
    name: str,
    revision: str,
    path: str,
    session: SessionDep,
    state: StateDep,
    principal: PrincipalDep,
) -> Response:
    """A file of a revision, with the headers huggingface_hub needs (X-Repo-Commit, X-Linked-Etag,
    X-Linked-Size); never Xet headers."""
    adapter = reads.get_adapter(session, principal, namespace, name)
    if not adapter.versions and revision == "main":  # a created, still empty repo: main exists, no file does
        return entry_not_found(f"{adapter.repo_id} has no files yet", EMPTY_COMMIT)
    version = version_for(session, adapter, revision)
    entry = version.file(path)
    if entry is None:
        return entry_not_found(f"{path} not found in {adapter.repo_id} at {version.revision}", version.revision)
    etag = f'"{entry.sha256}"'
    headers = {
        "X-Repo-Commit": version.revision,
        "ETag": etag,
        "X-Linked-Etag": etag,
        "X-Linked-Size": str(entry.size),
        "Cache-Control": "no-cache",
    }
    return blob_response(state, entry.sha256, path.rsplit("/", 1)[-1], headers, "application/octet-stream")


@router.get("/api/models/{namespace}/{name}")
@router.get("/api/models/{namespace}/{name}/revision/{revision}")
def model_info(
    namespace: str,
    name: str,
    request: Request,
    session: SessionDep,
    state: StateDep,
    principal: PrincipalDep,
    revision: str = "main",
) -> dict:
    adapter = reads.get_adapter(session, principal, namespace, name)
    version = version_for(session, adapter, revision) if adapter.versions or revision != "main" else None
    return model_json(request, state, adapter, version, full=True)


@router.get("/api/models/{namespace}/{name}/tree/{revision}")
@router.get("/api/models/{namespace}/{name}/tree/{revision}/{path:path}")
def tree(
    namespace: str,
    name: str,
    revision: str,
    session: SessionDep,
    state: StateDep,
    principal: PrincipalDep,
    path: str = "",
    recursive: Annotated[str | None, Query()] = None,
) -> list[dict]:
    """The files of a revision under `path`: one level, or with recursive=true every file below."""
    adapter = reads.get_adapter(session, principal, namespace, name)
    if not adapter.versions and revision == "main":
        return []
    version = version_for(session, adapter, revision)
    prefix = path.strip("/")
    recursive = (recursive or "").lower() in ("1", "true")
    files = [f for f in version.files if not prefix or f.path.startswith(prefix + "/")]
    if prefix and not files:
        raise NotFound(f"{prefix} not found in {adapter.repo_id}", code="entry_not_found")
    if recursive:
        return [file_entry(state.store, f) for f in files]
    entries: dict[str, dict] = {}  # one level: the files here, and the folders below (HF lists it so)
    for f in files:
        rest = f.path[len(prefix) + 1 :] if prefix else f.path
        head, sep, _ = rest.partition("/")
        if sep:
            folder = f"{prefix}/{head}" if prefix else head
            entries.setdefault(folder, {"type": "directory", "path": folder, "oid": tree_oid(folder, version)})
        else:
            entries[f.path] = file_entry(state.store, f)
    return list(entries.values())


def tree_oid(folder: str, version: Version) -> str:
    """A stable id for a folder of a version (the Hub gives git tree ids; clients only compare them)."""
    return hashlib.sha1(f"{version.revision}:{folder}".encode(), usedforsecurity=False).hexdigest()


@router.post("/api/models/{namespace}/{name}/paths-info/{revision}")
def paths_info(
    namespace: str,
    name: str,
    revision: str,
    session: SessionDep,
    state: StateDep,
    principal: PrincipalDep,
    paths: Annotated[list[str], Form()],
    expand: Annotated[str | None, Form()] = None,
) -> list[dict]:
    """What get_paths_info asks: the files and folders among `paths` (the others are left out)."""
    adapter = reads.get_adapter(session, principal, namespace, name)
    if not adapter.versions and revision == "main":
        return []
    version = version_for(session, adapter, revision)
    out = []
    for path in paths[:1000]:
        path = path.strip("/")
        entry = version.file(path)
        if entry is not None:
            out.append(file_entry(state.store, entry))
        elif any(f.path.startswith(path + "/") for f in version.files):
            out.append({"type": "directory", "path": path, "oid": tree_oid(path, version)})
    return out


@router.get("/api/models")
def list_models(
    request: Request,
    session: SessionDep,
    state: StateDep,
    principal: PrincipalDep,
    search: str | None = None,
    author: str | None = None,
    filter: Annotated[list[str] | None, Query()] = None,  # noqa: A002 - the Hub's parameter name
    limit: Annotated[int, Query(ge=1)] = MAX_LIST,
    full: str | None = None,
    cursor: str | None = None,
) -> Response:
    """Adapters as the Hub lists models; `filter` takes tags, `base_model:<id>` and `peft`/`lora`."""
    tags, base_model = [], None
    for f in filter or []:
        for term in f.split(","):
            if term.startswith("base_model:"):
                base_model = term.removeprefix("base_model:").removeprefix("adapter:")
            elif term and term not in ("peft", "lora", "safetensors"):
                tags.append(term)
    filters = reads.AdapterFilter(base_model=base_model, namespace=author, tags=tuple(tags), search=search)
    page, next_cursor = reads.list_adapters(session, principal, filters, cursor, min(limit, limits.MAX_PAGE))
    latest = reads.latest_versions(session, page)
    wants_full = (full or "").lower() in ("1", "true")
    body = [model_json(request, state, a, latest.get(a.id), full=wants_full) for a in page]
    headers = {}
    if next_cursor:
        url = request.url.include_query_params(cursor=next_cursor)
        headers["Link"] = f'<{url}>; rel="next"'
    return JSONResponse(body, headers=headers)


@router.get("/api/whoami-v2")
def whoami(session: SessionDep, principal: PrincipalDep) -> dict:
    if principal.anonymous:
        raise Unauthorized("Invalid credentials in Authorization header")
    orgs = user_orgs(session, principal)
    return {
        "type": "user",
        "id": str(principal.user_id),
        "name": principal.user,
        "fullname": principal.user,
        "orgs": [{"type": "org", "name": o} for o in orgs],
        "auth": {
            "type": "access_token",
            "accessToken": {"displayName": f"quiver {principal.scope} token", "role": principal.scope},
        },
    }
