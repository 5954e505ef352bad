"""What the Hugging Face Hub protocol routes share: how they name things (timestamps, revisions, file
entries) and what a model repo looks like as huggingface_hub's ModelInfo reads it
(docs/huggingface-protocol.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from quiver_hub.hub.error_handlers import header_safe
from quiver_hub.hub.services import Services
from quiver_hub.registry.catalogue import metadata, reads
from quiver_hub.registry.catalogue.cards import front_matter
from quiver_hub.registry.catalogue.files import git_oid, lfs_pointer, stored_as_lfs
from quiver_hub.registry.errors import InvalidRequest, NotFound
from quiver_hub.registry.models import AdapterRepo, File, Version
from quiver_hub.registry.storage.blobs import BlobStore


def endpoint(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def timestamp(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def version_for(session: Session, adapter: AdapterRepo, revision: str) -> Version:
    """`main` (the latest version), a 40-hex revision id, a version number or a tag; else
    RevisionNotFound."""
    try:
        return reads.get_version(session, adapter, revision)
    except InvalidRequest:
        raise NotFound(f"revision {revision!r} not found in {adapter.repo_id}", code="revision_not_found") from None


def file_oid(store: BlobStore, f: File) -> str:
    """The file's git object id (kept since migration 0008; computed from the blob for older files)."""
    return f.oid or git_oid(f.path, f.sha256, f.size, lambda: store.local_path(f.sha256))


def lfs_info(f: File, hash_key: str) -> dict:
    """The `lfs` part of an LFS file's entry: its sha256 under `hash_key` ("sha256" in a model's
    siblings, "oid" in the tree), size and pointer size; nothing for other files."""
    if not stored_as_lfs(f.path):
        return {}
    return {"lfs": {hash_key: f.sha256, "size": f.size, "pointerSize": len(lfs_pointer(f.sha256, f.size))}}


def model_json(request: Request, state: Services, adapter: AdapterRepo, version: Version | None, full: bool) -> dict:
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
        card = {**front_matter(metadata.version_card(state.store, version))}
        if base:
            card.setdefault("base_model", base)
        data["cardData"] = card
        data["siblings"] = [
            {"rfilename": f.path, "size": f.size, "blobId": file_oid(state.store, f), **lfs_info(f, "sha256")}
            for f in (version.files if version else [])
        ]
        if version:
            data["config"] = {
                "peft": {"base_model_name_or_path": base, "task_type": version.adapter_config.get("task_type")}
            }
    return data


EMPTY_COMMIT = "0" * 40  # the commit an empty repo answers with (the Hub's has an initial commit)


def entry_not_found(message: str, commit: str) -> JSONResponse:
    headers = {"X-Error-Code": "EntryNotFound", "X-Error-Message": header_safe(message), "X-Repo-Commit": commit}
    return JSONResponse({"error": message}, 404, headers=headers)


def file_entry(store: BlobStore, f: File) -> dict:
    """A file as the tree and paths-info list it: `oid` is its git object id as on the Hub (what `hf cache
    verify` checks a small file against), and an LFS file's sha256 is `lfs.oid`."""
    return {"type": "file", "path": f.path, "size": f.size, "oid": file_oid(store, f), **lfs_info(f, "oid")}
