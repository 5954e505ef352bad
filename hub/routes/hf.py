"""The Hugging Face Hub protocol, so huggingface_hub, PEFT, transformers and LoRA servers that speak
it work against Quiver with HF_ENDPOINT pointing here (docs/huggingface-protocol.md has the details).

Every decision (names, validation, visibility, writes) is the registry's, exactly as for /v1.
Errors here use the Hub's shape: {"error": "<message>"} with X-Error-Code (hub.errors does that for
routes tagged HF_TAG). A repo's `main` is its latest version; a commit makes the next version.
"""

from __future__ import annotations

import base64
import binascii
import io
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from quiver_hub.hub.deps import PrincipalDep, SessionDep, StateDep
from quiver_hub.hub.errors import HF_TAG
from quiver_hub.hub.services import Services
from quiver_hub.registry import reads, writes
from quiver_hub.registry.accounts import require_write, user_orgs
from quiver_hub.registry.cards import front_matter, yaml_errors
from quiver_hub.registry.commits import start_commit
from quiver_hub.registry.errors import InvalidRequest, NotFound, Unauthorized
from quiver_hub.registry.models import Adapter, Version
from quiver_hub.registry.parsing import parse_json

router = APIRouter(tags=[HF_TAG])
MAX_LIST = 1000


def endpoint(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def timestamp(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def version_for(session: Session, adapter: Adapter, revision: str) -> Version:
    """`main` (the latest version), a 40-hex revision id, or a version number; else RevisionNotFound."""
    try:
        return reads.get_version(session, adapter, revision)
    except InvalidRequest:
        raise NotFound(f"revision {revision!r} not found in {adapter.repo_id}", code="revision_not_found") from None


def is_lfs(path: str) -> bool:
    return path.endswith(".safetensors")


def model_json(request: Request, state: Services, adapter: Adapter, version: Version | None, full: bool) -> dict:
    """What huggingface_hub's ModelInfo(**data) reads."""
    base = version.base_model if version else adapter.base_model
    tags = {*(adapter.tags or []), "peft", "lora", "safetensors"}
    if base:
        tags |= {f"base_model:{base}", f"base_model:adapter:{base}"}
    data: dict[str, Any] = {
        "_id": str(adapter.id),
        "id": adapter.repo_id,
        "modelId": adapter.repo_id,
        "author": adapter.namespace.name,
        "sha": version.revision if version else None,
        "lastModified": timestamp(version.created_at if version else adapter.updated_at),
        "createdAt": timestamp(adapter.created_at),
        "private": adapter.visibility == "private",
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "library_name": "peft",
        "tags": sorted(tags),
        "pipeline_tag": adapter.task,
    }
    if full:
        card = {**front_matter(writes.version_card(state.store, version))}
        if base:
            card.setdefault("base_model", base)
        data["cardData"] = card
        data["siblings"] = [
            {
                "rfilename": f.path,
                "size": f.size,
                "blobId": f.sha256,
                **({"lfs": {"size": f.size, "sha256": f.sha256, "pointerSize": 134}} if is_lfs(f.path) else {}),
            }
            for f in (version.files if version else [])
        ]
        if version:
            data["config"] = {
                "peft": {"base_model_name_or_path": base, "task_type": version.adapter_config.get("task_type")}
            }
    return data


# -- read -------------------------------------------------------------------------------------------

EMPTY_COMMIT = "0" * 40  # the commit an empty repo answers with (the Hub's has an initial commit)


def entry_not_found(message: str, commit: str) -> JSONResponse:
    headers = {"X-Error-Code": "EntryNotFound", "X-Error-Message": message, "X-Repo-Commit": commit}
    return JSONResponse({"error": message}, 404, headers=headers)


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
    return FileResponse(
        state.store.path(entry.sha256),
        media_type="application/octet-stream",
        headers={
            "X-Repo-Commit": version.revision,
            "ETag": etag,
            "X-Linked-Etag": etag,
            "X-Linked-Size": str(entry.size),
            "Cache-Control": "no-cache",
        },
        filename=path.rsplit("/", 1)[-1],
    )


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
    principal: PrincipalDep,
    path: str = "",
) -> list[dict]:
    """The files of a revision (a version's files are flat: no folders)."""
    adapter = reads.get_adapter(session, principal, namespace, name)
    if not adapter.versions and revision == "main":
        return []
    version = version_for(session, adapter, revision)
    prefix = path.strip("/")
    files = [f for f in version.files if not prefix or f.path.startswith(prefix + "/")]
    if prefix and not files:
        raise NotFound(f"{prefix} not found in {adapter.repo_id}", code="entry_not_found")
    return [
        {
            "type": "file",
            "path": f.path,
            "size": f.size,
            "oid": f.sha256,
            **({"lfs": {"oid": f.sha256, "size": f.size, "pointerSize": 134}} if is_lfs(f.path) else {}),
        }
        for f in files
    ]


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
    page, next_cursor = reads.list_adapters(session, principal, filters, cursor, min(limit, reads.MAX_PAGE))
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


# -- write ------------------------------------------------------------------------------------------


class CreateRepo(BaseModel):
    name: str
    organization: str | None = None
    private: bool | None = None
    visibility: str | None = None
    type: str | None = None


@router.post("/api/repos/create")
def create_repo(body: CreateRepo, request: Request, state: StateDep, principal: PrincipalDep) -> JSONResponse:
    if body.type not in (None, "model"):
        raise InvalidRequest(f"only model repos can be created here, not {body.type!r}")
    if principal.anonymous:
        raise Unauthorized("creating a repo needs a token: send Authorization: Bearer <token>")
    namespace = body.organization or principal.user
    visibility = "private" if body.private or body.visibility == "private" else "public"
    adapter, created = writes.create_adapter(state.sessions, principal, namespace, body.name, visibility)
    url = f"{endpoint(request)}/{namespace}/{body.name}"
    if not created:
        return JSONResponse({"error": "You already created this model repo", "url": url}, 409)
    return JSONResponse({"url": url, "name": f"{namespace}/{body.name}", "id": str(adapter.id)})


@router.post("/api/validate-yaml")
async def validate_yaml(request: Request) -> dict:
    try:
        body = parse_json(await request.body(), "the body", InvalidRequest)
        content = body.get("content", "") if isinstance(body, dict) else ""
    except InvalidRequest:
        content = ""
    return {
        "errors": [{"message": m} for m in yaml_errors(content if isinstance(content, str) else "")],
        "warnings": [],
    }


class PreuploadFile(BaseModel):
    path: str
    size: int = 0
    sample: str = ""


class Preupload(BaseModel):
    files: list[PreuploadFile]


@router.post("/api/models/{namespace}/{name}/preupload/{revision}")
def preupload(
    namespace: str,
    name: str,
    revision: str,
    body: Preupload,
    session: SessionDep,
    principal: PrincipalDep,
) -> dict:
    """Every file travels in the commit body ("regular"): with hf_xet installed, "lfs" files would go
    to Xet, which Quiver does not speak."""
    require_write(session, principal, namespace)
    reads.get_adapter(session, principal, namespace, name)
    return {"files": [{"path": f.path, "uploadMode": "regular", "shouldIgnore": False} for f in body.files]}


@router.post("/api/models/{namespace}/{name}/commit/{revision}")
async def commit(
    namespace: str,
    name: str,
    revision: str,
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
) -> dict:
    """NDJSON: a header line, then file / deletedFile / deletedFolder lines. Makes the next version
    from the current files with these changes, validated and analysed exactly like a /v1 upload."""
    draft = await run_in_threadpool(start_commit, state.sessions, state.store, principal, namespace, name, revision)
    body = await request.body()
    try:
        for number, line in enumerate(body.splitlines(), 1):
            if not line.strip():
                continue
            item = parse_json(line, f"commit line {number}", InvalidRequest)
            if not isinstance(item, dict) or "key" not in item or not isinstance(item.get("value"), dict):
                raise InvalidRequest(f"commit line {number} is not a {{'key', 'value'}} JSON object")
            key, value = item["key"], item["value"]
            if key == "header":
                draft.expect_parent(value.get("parentCommit"))
            elif key == "file":
                path = value.get("path", "")
                if value.get("encoding", "base64") != "base64":
                    raise InvalidRequest(f"{path}: only base64 file content is supported")
                try:
                    data = base64.b64decode(value.get("content", ""), validate=True)
                except (binascii.Error, ValueError):
                    raise InvalidRequest(f"{path}: content is not valid base64") from None
                await run_in_threadpool(draft.add, state.store, path, io.BytesIO(data), state.settings.max_upload_bytes)
            elif key == "deletedFile":
                draft.delete_file(value.get("path", ""))
            elif key == "deletedFolder":
                draft.delete_folder(value.get("path", ""))
            elif key == "lfsFile":
                raise InvalidRequest(
                    "LFS uploads are not supported: Quiver asks for every file inline (preupload answers 'regular')"
                )
            else:
                raise InvalidRequest(f"commit line {number}: unknown key {key!r}")
    except BaseException:
        draft.discard(state.store)
        raise
    version = await run_in_threadpool(draft.publish, state.sessions, state.store, principal, state.embedder)
    url = f"{endpoint(request)}/{namespace}/{name}"
    return {"commitUrl": f"{url}/commit/{version.revision}", "commitOid": version.revision, "pullRequestUrl": None}
