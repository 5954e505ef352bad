"""MBC cluster runs over the caller's visible library, and cluster adapters built from them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from quiver_hub.hub.api import schemas
from quiver_hub.hub.deps import PrincipalDep, SessionDep, StateDep
from quiver_hub.registry.accounts.access import Principal
from quiver_hub.registry.clusters import cluster_adapters, runs
from quiver_hub.registry.models import ClusterRun

router = APIRouter(prefix="/v1", tags=["clusters"])


class ClusterRequestIn(BaseModel):
    model_config = {"extra": "forbid"}
    base_model: str = Field(min_length=1)
    k: int | None = Field(None, ge=1, description="omitted: chosen by silhouette over 2..10")
    method: Literal["outputs-middle", "outputs", "sketch", "params"] = "outputs-middle"
    seed: int = 0
    sparsity: float = Field(0.5, ge=0, lt=1, description='"params": fraction of smallest entries zeroed')
    task: str | None = None
    tags: list[str] = []
    namespace: str | None = None


class RunOut(BaseModel):
    id: int
    status: Literal["running", "done", "failed"]
    progress: float
    method: str
    base_model: str
    k: int | None
    silhouette: float | None
    clusters: list[dict[str, Any]]
    params: dict[str, Any]
    error: str | None
    created_at: datetime
    finished_at: datetime | None


class MergeIn(BaseModel):
    model_config = {"extra": "forbid"}
    rank: int | None = Field(None, ge=1, le=1024, description="omitted: the exact average (rank = sum of ranks)")


def run_out(session: Session, principal: Principal, run: ClusterRun) -> RunOut:
    """A run as the caller may see it now (members it may not see left out, and not counted)."""
    clusters = runs.visible_clusters(session, principal, run)
    return RunOut(
        id=run.id,
        status=run.status,
        progress=run.progress,
        method=run.method,
        base_model=run.base_model,
        k=run.k,
        silhouette=run.silhouette,
        clusters=clusters,
        params={**run.params, "adapters": sum(len(c["members"]) for c in clusters)} if run.clusters else run.params,
        error=run.error,
        created_at=run.created_at,
        finished_at=run.finished_at,
    )


@router.post(
    "/clusters",
    response_model=RunOut,
    status_code=201,
    responses={202: {"description": "a large run, still running in the background"}},
)
async def create_run(body: ClusterRequestIn, state: StateDep, principal: PrincipalDep) -> JSONResponse:
    """Cluster the latest versions of the adapters you can see (MBC). Runs over more than 200 adapters
    answer 202 while they run; poll GET /v1/clusters/{id} for status and progress."""
    req = runs.ClusterRequest(**{**body.model_dump(), "tags": tuple(body.tags)})

    def start() -> RunOut:
        run = runs.start_run(state.sessions, state.store, principal, req, state.background)
        with state.sessions() as session:
            return run_out(session, principal, run)

    out = await run_in_threadpool(start)
    return JSONResponse(out.model_dump(mode="json"), status_code=202 if out.status == "running" else 201)


@router.get("/clusters", response_model=list[RunOut])
def list_runs(session: SessionDep, principal: PrincipalDep) -> list[RunOut]:
    return [run_out(session, principal, r) for r in runs.list_runs(session, principal)]


@router.get("/clusters/{run_id}", response_model=RunOut)
def get_run(run_id: int, session: SessionDep, principal: PrincipalDep) -> RunOut:
    return run_out(session, principal, runs.get_run(session, principal, run_id))


@router.post("/clusters/{run_id}/merge", response_model=list[schemas.VersionOut], status_code=201)
def merge(run_id: int, body: MergeIn, state: StateDep, principal: PrincipalDep) -> list[schemas.VersionOut]:
    """Publish one adapter per cluster into your namespace (cluster-<run>-<index>): the exact average of
    its members' deltas, or with `rank` its best rank-r approximation; each records its lineage."""
    versions = cluster_adapters.merge_run(state.sessions, state.store, state.embedder, principal, run_id, body.rank)
    return [schemas.version_out(v) for v in versions]
