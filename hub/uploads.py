"""Turning a multipart upload into staged files in the blob store (docs/architecture.md, "Storage")."""

from __future__ import annotations

from fastapi import HTTPException, Request
from starlette.datastructures import FormData, UploadFile

from quiver_hub.registry.catalogue.metadata import AdapterMeta, parse_tags
from quiver_hub.registry.catalogue.names import check_file_path
from quiver_hub.registry.errors import InvalidRequest, RegistryError
from quiver_hub.registry.intake.parsing import parse_json
from quiver_hub.registry.limits import MAX_DESCRIPTION_CHARS, MAX_FILES
from quiver_hub.registry.storage.blobs import BlobStore, StagedFile

MAX_FIELD_BYTES = 4 * MAX_DESCRIPTION_CHARS  # a text field (UTF-8: up to 4 bytes a character)
FIELDS = ("description", "task", "tags", "license", "visibility", "base_model", "derived_from")


async def read_form(request: Request) -> FormData:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest("send the adapter as multipart/form-data, one part named 'files' per file")
    try:
        return await request.form(max_files=MAX_FILES, max_fields=len(FIELDS), max_part_size=MAX_FIELD_BYTES)
    except (RegistryError, HTTPException):  # e.g. 413 from the body limit
        raise
    except Exception as e:  # Starlette's own errors on malformed forms
        raise InvalidRequest(f"could not read the multipart body: {e}") from None


def stage_files(form: FormData, store: BlobStore, limit: int) -> dict[str, StagedFile]:
    """Stage every part named 'files' under its filename (its path in the adapter folder)."""
    staged: dict[str, StagedFile] = {}
    try:
        for part in form.getlist("files"):
            if not isinstance(part, UploadFile) or not part.filename:
                raise InvalidRequest("each 'files' part must be a file whose filename is its path in the adapter")
            path = check_file_path(part.filename)
            if path in staged:
                raise InvalidRequest(f"file {path!r} was sent twice")
            part.file.seek(0)
            staged[path] = store.stage(part.file, limit=limit)
    except BaseException:
        store.discard(staged.values())
        raise
    if not staged:
        raise InvalidRequest("no files: send adapter_config.json and adapter_model.safetensors as 'files' parts")
    return staged


def text_field(form: FormData, key: str) -> str | None:
    value = form.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"form field {key!r} must be text, not a file")
    return value


def form_lineage(form: FormData) -> dict | None:
    """The `derived_from` field: the lineage a composition declares (registry.catalogue.lineage.check_lineage)."""
    raw = text_field(form, "derived_from")
    return parse_json(raw, "derived_from", InvalidRequest) if raw else None


def form_meta(form: FormData) -> AdapterMeta:
    def text(key: str) -> str | None:
        return text_field(form, key)

    unknown = set(form.keys()) - {"files", *FIELDS}
    if unknown:
        raise InvalidRequest(f"unknown form fields: {', '.join(sorted(unknown))}")
    return AdapterMeta(
        description=text("description"),
        task=text("task") or None,
        tags=parse_tags(text("tags")),
        license=text("license") or None,
        visibility=text("visibility") or None,
        base_model=text("base_model") or None,
    ).check()
