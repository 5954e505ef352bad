"""The Hugging Face Hub protocol, upload side: what upload_file, upload_folder, create_commit and
PEFT's push_to_hub send (validate-yaml, preupload, the NDJSON commit). A commit makes the next version,
validated and analysed exactly like a /v1 upload (registry.catalogue.commits)."""

from __future__ import annotations

import base64
import binascii
import io

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from quiver_hub.hub.deps import PrincipalDep, SessionDep, StateDep
from quiver_hub.hub.error_handlers import HF_TAG
from quiver_hub.hub.hf.protocol import endpoint
from quiver_hub.registry.accounts.access import require_write
from quiver_hub.registry.catalogue import reads
from quiver_hub.registry.catalogue.cards import yaml_errors
from quiver_hub.registry.catalogue.commits import start_commit
from quiver_hub.registry.errors import InvalidRequest
from quiver_hub.registry.intake.parsing import parse_json

router = APIRouter(tags=[HF_TAG])


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


def text(value: dict, field: str, number: int, default: str = "") -> str:
    """A commit line's string field; a clear 400 when it is anything else (a number, a list...)."""
    found = value.get(field, default)
    if not isinstance(found, str):
        raise InvalidRequest(f"commit line {number}: {field!r} must be a string, got {type(found).__name__}")
    return found


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
                draft.header(value.get("summary"), value.get("description"), value.get("parentCommit"))
            elif key == "file":
                path = text(value, "path", number)
                if text(value, "encoding", number, "base64") != "base64":
                    raise InvalidRequest(f"{path}: only base64 file content is supported")
                try:
                    data = base64.b64decode(text(value, "content", number), validate=True)
                except (binascii.Error, ValueError):
                    raise InvalidRequest(f"{path}: content is not valid base64") from None
                await run_in_threadpool(draft.add, state.store, path, io.BytesIO(data), state.settings.max_upload_bytes)
            elif key == "deletedFile":
                draft.delete_file(text(value, "path", number))
            elif key == "deletedFolder":
                draft.delete_folder(text(value, "path", number))
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
