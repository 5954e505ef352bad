"""The JSON shapes of the /v1 API (docs/architecture.md, "The HTTP surfaces": how versions are named)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from quiver_hub.registry.catalogue.reads import VersionIdentity
from quiver_hub.registry.lora import algebra
from quiver_hub.registry.models import AdapterRepo, Tag, Version


class FileOut(BaseModel):
    path: str
    sha256: str
    size: int


class VersionOut(BaseModel):
    id: str = Field(description="namespace/name")
    version: int
    revision: str = Field(description="40-hex revision id; Hugging Face clients pin it")
    base_model: str
    rank: int = Field(description="the config's r; `ranks` has each module's, where rank_pattern differs")
    alpha: float
    target_modules: list[str]
    ranks: dict[str, int] = Field(default_factory=dict, description="module -> its rank (rank_pattern applied)")
    num_parameters: int
    total_size: int
    published_by: str | None
    created_at: datetime
    adapter_config: dict[str, Any]
    files: list[FileOut]
    derived_from: dict[str, Any] | None = Field(None, description="lineage of a derived (cluster) adapter")
    tags: list[str] = Field(default_factory=list, description="the tags naming this version")
    title: str = Field("", description="the commit's title")
    message: str = Field("", description="the commit's message")
    notices: list[str] = Field(
        default_factory=list, description="in a publish's answer: what the hub decided for you, or asks you to check"
    )


class VersionRef(BaseModel):
    id: str
    version: int
    revision: str


class AdapterOut(BaseModel):
    id: str
    namespace: str
    name: str
    base_model: str
    task: str | None
    tags: list[str]
    description: str
    license: str | None
    visibility: Literal["public", "private"]
    created_at: datetime
    updated_at: datetime
    latest: VersionRef | None


class AdapterPage(BaseModel):
    adapters: list[AdapterOut]
    next_cursor: str | None


class VersionList(BaseModel):
    versions: list[VersionOut]


class TagIn(BaseModel):
    model_config = {"extra": "forbid"}
    tag: str = Field(min_length=1, max_length=128)
    revision: str = Field("latest", max_length=128, description="the version to name: number, revision id, tag")
    message: str = Field("", max_length=10_000)


class TagOut(BaseModel):
    name: str
    version: VersionRef
    message: str
    created_at: datetime


class TagList(BaseModel):
    tags: list[TagOut]


class Deleted(BaseModel):
    deleted: list[VersionRef]


class AdapterPatch(BaseModel):
    """Fields to change; those left out stay as they are."""

    model_config = {"extra": "forbid"}
    description: str | None = None
    task: str | None = None
    tags: list[str] | None = None
    license: str | None = None
    visibility: Literal["public", "private"] | None = None


def version_ref(v: Version) -> VersionRef:
    return VersionRef(**asdict(VersionIdentity.of(v)))


def tag_out(t: Tag) -> TagOut:
    return TagOut(name=t.name, version=version_ref(t.version), message=t.message, created_at=t.created_at)


def version_out(v: Version) -> VersionOut:
    return VersionOut(
        **version_ref(v).model_dump(),
        base_model=v.base_model,
        rank=v.rank,
        alpha=v.alpha,
        target_modules=v.target_modules,
        ranks={m: algebra.module_rank(v.adapter_config, m) for m in v.target_modules},
        num_parameters=v.num_parameters,
        total_size=v.total_size,
        published_by=v.published_by.name if v.published_by else None,
        created_at=v.created_at,
        adapter_config=v.adapter_config,
        files=[FileOut(path=f.path, sha256=f.sha256, size=f.size) for f in v.files],
        derived_from=v.derived_from,
        notices=list(v.notices),
        tags=[t.name for t in v.tags],
        title=v.title,
        message=v.message,
    )


def adapter_out(a: AdapterRepo, latest: Version | None) -> AdapterOut:
    return AdapterOut(
        id=a.repo_id,
        namespace=a.namespace.name,
        name=a.name,
        base_model=a.base_model,
        task=a.task,
        tags=a.tags or [],
        description=a.description or "",
        license=a.license,
        visibility=a.visibility,
        created_at=a.created_at,
        updated_at=a.updated_at,
        latest=version_ref(latest) if latest else None,
    )
