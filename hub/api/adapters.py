"""The native /v1 API: publish, list, read, edit and delete adapters, and download their files."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from safetensors.numpy import save

from quiver_hub.hub.api import schemas
from quiver_hub.hub.deps import PrincipalDep, SessionDep, StateDep
from quiver_hub.hub.downloads import blob_response
from quiver_hub.hub.uploads import form_lineage, form_meta, read_form, stage_files
from quiver_hub.registry import limits
from quiver_hub.registry.accounts.access import require_write
from quiver_hub.registry.catalogue import edits, metadata, publishing, reads, tags
from quiver_hub.registry.catalogue.lineage import check_lineage
from quiver_hub.registry.catalogue.names import check_repo_id
from quiver_hub.registry.errors import NotFound
from quiver_hub.registry.search.vectors import from_bytes

router = APIRouter(prefix="/v1", tags=["adapters"])
MEDIA_TYPES = {"json": "application/json", "jsonl": "application/jsonl", "md": "text/markdown; charset=utf-8"}


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one part per file; its filename is its path in the adapter folder "
                            "(adapter_config.json, adapter_model.safetensors, README.md, examples.jsonl, ...)",
                        },
                        "description": {"type": "string"},
                        "task": {"type": "string"},
                        "tags": {"type": "string", "description": "comma separated"},
                        "license": {"type": "string"},
                        "visibility": {"type": "string", "enum": ["public", "private"]},
                        "base_model": {"type": "string", "description": "sets or corrects the config's"},
                        "derived_from": {
                            "type": "string",
                            "description": 'JSON lineage: {"method", "versions": [{"id", "revision", "weight"}]}',
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/adapters/{namespace}/{name}", status_code=201, response_model=schemas.VersionOut, openapi_extra=UPLOAD_BODY
)
async def publish_adapter(
    namespace: str, name: str, request: Request, state: StateDep, principal: PrincipalDep
) -> schemas.VersionOut:
    """Publish a new version. Multipart: parts named `files` (filename = path in the adapter folder),
    and optional fields description, task, tags (comma separated), license, visibility, base_model and
    derived_from (a composition's lineage, JSON)."""

    def precheck() -> None:
        check_repo_id(namespace, name)
        with state.sessions() as session:
            require_write(session, principal, namespace)

    await run_in_threadpool(precheck)  # refuse before reading a byte of the body
    form = await read_form(request)
    try:
        meta = form_meta(form)
        lineage = form_lineage(form)
        if lineage is not None:
            lineage = await run_in_threadpool(check_lineage, state.sessions, principal, lineage)
        files = await run_in_threadpool(stage_files, form, state.store, state.settings.max_upload_bytes)
        version = await run_in_threadpool(
            publishing.publish,
            state.sessions,
            state.store,
            principal,
            namespace,
            name,
            files,
            meta,
            state.embedder,
            derived_from=lineage,
        )
    finally:
        await form.close()
    return schemas.version_out(version)


@router.get("/adapters", response_model=schemas.AdapterPage)
def list_adapters(
    session: SessionDep,
    principal: PrincipalDep,
    base_model: str | None = None,
    task: str | None = None,
    tag: str | None = None,
    namespace: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=limits.MAX_PAGE)] = 50,
) -> schemas.AdapterPage:
    filters = reads.AdapterFilter(base_model=base_model, task=task, tags=(tag,) if tag else (), namespace=namespace)
    adapters, next_cursor = reads.list_adapters(session, principal, filters, cursor, limit)
    latest = reads.latest_versions(session, adapters)
    return schemas.AdapterPage(
        adapters=[schemas.adapter_out(a, latest.get(a.id)) for a in adapters], next_cursor=next_cursor
    )


@router.get("/adapters/{namespace}/{name}", response_model=schemas.AdapterOut)
def get_adapter(namespace: str, name: str, session: SessionDep, principal: PrincipalDep) -> schemas.AdapterOut:
    adapter = reads.get_adapter(session, principal, namespace, name)
    return schemas.adapter_out(adapter, reads.latest_versions(session, [adapter]).get(adapter.id))


@router.patch("/adapters/{namespace}/{name}", response_model=schemas.AdapterOut)
def patch_adapter(
    namespace: str, name: str, patch: schemas.AdapterPatch, state: StateDep, principal: PrincipalDep
) -> schemas.AdapterOut:
    meta = metadata.AdapterMeta(**patch.model_dump())
    edits.update_adapter(state.sessions, state.store, state.embedder, principal, namespace, name, meta)
    with state.sessions() as session:
        adapter = reads.get_adapter(session, principal, namespace, name)
        return schemas.adapter_out(adapter, reads.latest_versions(session, [adapter]).get(adapter.id))


@router.delete("/adapters/{namespace}/{name}", response_model=schemas.Deleted)
def delete_adapter(namespace: str, name: str, state: StateDep, principal: PrincipalDep) -> schemas.Deleted:
    """Delete the adapter and all its versions; blobs nothing else references are removed."""
    doomed = edits.delete_adapter(state.sessions, state.store, principal, namespace, name)
    return schemas.Deleted(deleted=[schemas.VersionRef(**asdict(v)) for v in doomed])


@router.get("/adapters/{namespace}/{name}/versions", response_model=schemas.VersionList)
def list_versions(namespace: str, name: str, session: SessionDep, principal: PrincipalDep) -> schemas.VersionList:
    adapter = reads.get_adapter(session, principal, namespace, name)
    return schemas.VersionList(versions=[schemas.version_out(v) for v in adapter.versions])


@router.get("/adapters/{namespace}/{name}/versions/{rev}", response_model=schemas.VersionOut)
def get_version(
    namespace: str, name: str, rev: str, session: SessionDep, principal: PrincipalDep
) -> schemas.VersionOut:
    """rev: a version number, a 40-hex revision id, a tag, or `latest`."""
    adapter = reads.get_adapter(session, principal, namespace, name)
    return schemas.version_out(reads.get_version(session, adapter, rev))


@router.delete("/adapters/{namespace}/{name}/versions/{rev}", response_model=schemas.Deleted)
def delete_version(namespace: str, name: str, rev: str, state: StateDep, principal: PrincipalDep) -> schemas.Deleted:
    doomed = edits.delete_adapter(state.sessions, state.store, principal, namespace, name, rev=rev)
    return schemas.Deleted(deleted=[schemas.VersionRef(**asdict(v)) for v in doomed])


@router.get("/adapters/{namespace}/{name}/tags", response_model=schemas.TagList)
def list_tags(namespace: str, name: str, session: SessionDep, principal: PrincipalDep) -> schemas.TagList:
    """The adapter's tags: names for versions, usable wherever a revision is."""
    adapter = reads.get_adapter(session, principal, namespace, name)
    return schemas.TagList(tags=[schemas.tag_out(t) for t in tags.list_tags(session, adapter)])


@router.post("/adapters/{namespace}/{name}/tags", response_model=schemas.TagOut, status_code=201)
def create_tag(
    namespace: str, name: str, body: schemas.TagIn, state: StateDep, principal: PrincipalDep
) -> schemas.TagOut:
    tag = tags.create_tag(state.sessions, principal, namespace, name, body.tag, body.revision, body.message)
    return schemas.tag_out(tag)


@router.delete("/adapters/{namespace}/{name}/tags/{tag}", status_code=204)
def delete_tag(namespace: str, name: str, tag: str, state: StateDep, principal: PrincipalDep) -> Response:
    tags.delete_tag(state.sessions, principal, namespace, name, tag)
    return Response(status_code=204)


FILE_ROUTE = "/adapters/{namespace}/{name}/versions/{rev}/files/{path:path}"


@router.head(FILE_ROUTE, operation_id="head_file", summary="File metadata (headers only)")
@router.get(FILE_ROUTE, operation_id="download_file", summary="Download a file")
def download_file(
    namespace: str, name: str, rev: str, path: str, session: SessionDep, state: StateDep, principal: PrincipalDep
) -> Response:
    """A file of a version, streamed; ETag is its sha256; Range requests are honoured."""
    adapter = reads.get_adapter(session, principal, namespace, name)
    version = reads.get_version(session, adapter, rev)
    entry = version.file(path)
    if entry is None:
        raise NotFound(f"{adapter.repo_id} version {version.number} has no file {path!r}", code="entry_not_found")
    media_type = MEDIA_TYPES.get(path.rsplit(".", 1)[-1], "application/octet-stream")
    headers = {
        "ETag": f'"{entry.sha256}"',
        "X-Quiver-Revision": version.revision,
        "X-Linked-Size": str(entry.size),
        "Cache-Control": "no-cache",
    }
    filename = path.rsplit("/", 1)[-1]
    return blob_response(state, entry.sha256, filename, headers, media_type, media_type != "application/octet-stream")


@router.get(
    "/adapters/{namespace}/{name}/versions/{rev}/prototypes",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def get_prototypes(namespace: str, name: str, rev: str, session: SessionDep, principal: PrincipalDep) -> Response:
    """The version's Arrow prototypes as safetensors: one float32 vector (in_features) per module name;
    `__metadata__` holds the singular values (`sigma`, JSON), `base_model` and `revision`."""
    adapter = reads.get_adapter(session, principal, namespace, name)
    version = reads.get_version(session, adapter, rev)
    tensors = {p.module: from_bytes(p.vector) for p in version.prototypes}
    metadata = {
        "format": "quiver-prototypes-v1",
        "base_model": version.base_model,
        "revision": version.revision,
        "sigma": json.dumps({p.module: p.sigma for p in version.prototypes}),
    }
    return Response(
        save(tensors, metadata=metadata),
        media_type="application/octet-stream",
        headers={"ETag": f'"{version.revision}-prototypes"'},
    )
