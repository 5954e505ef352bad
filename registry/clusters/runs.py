"""Cluster runs: MBC over the adapters a caller may see, stored with their result."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.accounts.access import Principal, can_read, require_write_token
from quiver_hub.registry.catalogue.reads import VersionIdentity, latest_versions, visible
from quiver_hub.registry.clusters.mbc import (
    METHODS,
    Aligned,
    cluster,
    middle_layers,
    params_matrix,
    project_2d,
    sketch_matrix,
)
from quiver_hub.registry.db import writing
from quiver_hub.registry.errors import InvalidRequest, NotFound
from quiver_hub.registry.limits import MAX_DB_ID
from quiver_hub.registry.lora import algebra, peft_format
from quiver_hub.registry.models import AdapterRepo, ClusterRun, Embedding, Version, utcnow
from quiver_hub.registry.search.vectors import from_bytes, to_bytes
from quiver_hub.registry.storage.blobs import BlobStore

log = logging.getLogger("quiver.clusters")
BACKGROUND_OVER = 200  # runs over more adapters than this go to the background


@dataclass(frozen=True)
class ClusterRequest:
    base_model: str
    k: int | None = None
    method: str = "outputs-middle"
    seed: int = 0
    sparsity: float = 0.5
    task: str | None = None
    tags: tuple[str, ...] = ()
    namespace: str | None = None

    def check(self) -> ClusterRequest:
        if self.method not in METHODS:
            raise InvalidRequest(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not self.base_model:
            raise InvalidRequest("base_model is required: only adapters of one base model can be compared")
        return self


def members_for(session: Session, principal: Principal, req: ClusterRequest) -> list[Version]:
    """The latest version of every adapter the caller may see that matches the request."""
    query = visible(principal, select(AdapterRepo)).where(AdapterRepo.base_model == req.base_model)
    if req.task:
        query = query.where(AdapterRepo.task == req.task)
    adapters = [
        a for a in session.scalars(query.order_by(AdapterRepo.id)) if all(t in (a.tags or []) for t in req.tags)
    ]
    if req.namespace:
        adapters = [a for a in adapters if a.namespace.name == req.namespace]
    latest = latest_versions(session, adapters)
    return [latest[a.id] for a in adapters if a.id in latest]


def start_run(
    sessions: sessionmaker[Session],
    store: BlobStore,
    principal: Principal,
    req: ClusterRequest,
    background: Callable[[Callable[[], None]], None],
) -> ClusterRun:
    """Create a run; small ones are computed before this returns, large ones by `background`."""
    require_write_token(principal, "a cluster run")
    req.check()
    with writing(sessions) as session:
        members = members_for(session, principal, req)
        if len(members) < 2:
            raise InvalidRequest(
                f"clustering needs at least 2 adapters of {req.base_model!r} you can see; {len(members)} match"
            )
        if req.k is not None and req.k > len(members):
            raise InvalidRequest(f"k={req.k} is more than the {len(members)} adapters that match")
        run = ClusterRun(
            owner_id=principal.user_id,
            base_model=req.base_model,
            method=req.method,
            requested_k=req.k,
            seed=req.seed,
            status="running",
            progress=0.0,
            params={
                "task": req.task,
                "tags": list(req.tags),
                "namespace": req.namespace,
                "sparsity": req.sparsity,
                "adapters": len(members),
            },
        )
        session.add(run)
        session.commit()
        run_id, version_ids = run.id, [v.id for v in members]
    job = lambda: compute(sessions, store, run_id, version_ids, req)  # noqa: E731
    if len(version_ids) > BACKGROUND_OVER:
        background(job)
    else:
        job()
    with sessions() as session:
        return session.get(ClusterRun, run_id)


def compute(
    sessions: sessionmaker[Session], store: BlobStore, run_id: int, version_ids: list[int], req: ClusterRequest
) -> None:
    """Embed, cluster and store the result; a failure is recorded on the run, never lost."""

    def progress(fraction: float) -> None:
        with writing(sessions) as session:
            session.execute(update(ClusterRun).where(ClusterRun.id == run_id).values(progress=round(fraction, 3)))
            session.commit()

    try:
        with sessions() as session:
            versions = list(session.scalars(select(Version).where(Version.id.in_(version_ids)).order_by(Version.id)))
            if req.method != "params":
                kind = "sketch" if req.method == "sketch" else "outputs"
                stored = sketches(sessions, store, versions, kind, progress=lambda f: progress(0.3 * f))
                block = algebra.SKETCH_P * algebra.SKETCH_Q if kind == "sketch" else algebra.output_block()
                keep = None
                if req.method == "outputs-middle":
                    keep = middle_layers(m for v in versions for m in v.target_modules)
                X = sketch_matrix([(v.target_modules, stored[v.id]) for v in versions], block, keep)
            else:
                X = params_matrix([version_factors(store, v) for v in versions], sparsity=req.sparsity, seed=req.seed)
            progress(0.3)
            partition = cluster(X, req.k, req.seed, progress=lambda f: progress(0.3 + 0.7 * f))
            xy = project_2d(X.embeddings() if isinstance(X, Aligned) else X)
            clusters = []
            for index in range(partition.k):
                rows = [i for i, label in enumerate(partition.labels) if label == index]
                rows.sort(key=lambda i: partition.distances[i])
                clusters.append(
                    {
                        "index": index,
                        "members": [
                            {
                                **identity(versions[i]),
                                "task": versions[i].adapter.task,
                                "distance": float(partition.distances[i]),
                                "xy": [round(float(xy[i, 0]), 4), round(float(xy[i, 1]), 4)],
                            }
                            for i in rows
                        ],
                    }
                )
        values = dict(
            status="done",
            progress=1.0,
            k=partition.k,
            silhouette=partition.silhouette,
            clusters=clusters,
            finished_at=utcnow(),
        )
    except Exception as e:  # noqa: BLE001 - recorded on the run for its owner to read
        log.exception("cluster run %s failed", run_id)
        values = dict(
            status="failed", error=getattr(e, "message", None) or f"{type(e).__name__}: {e}", finished_at=utcnow()
        )
    with writing(sessions) as session:
        session.execute(update(ClusterRun).where(ClusterRun.id == run_id).values(**values))
        session.commit()


def identity(v: Version) -> dict:
    i = VersionIdentity.of(v)
    return {"id": i.id, "version": i.version, "revision": i.revision}


SKETCHES = {"sketch": algebra.sketch, "outputs": algebra.output_sketch}


def sketches(
    sessions: sessionmaker[Session],
    store: BlobStore,
    versions: list[Version],
    kind: str,
    progress: Callable[[float], None] = lambda f: None,
) -> dict[int, np.ndarray]:
    """Each version's stored sketch of a kind ("sketch" or "outputs"). Those missing (versions published
    before output sketches, or before migration 0009 drew them anew) are computed from the weights and
    stored, so the next run finds them; progress goes from 0 to 1 over them."""
    ids = [v.id for v in versions]
    with sessions() as session:
        rows = session.scalars(select(Embedding).where(Embedding.version_id.in_(ids), Embedding.kind == kind))
        found = {e.version_id: from_bytes(e.vector) for e in rows}
    missing = [v for v in versions if v.id not in found]
    for i, v in enumerate(missing):
        vector = SKETCHES[kind](version_factors(store, v))
        found[v.id] = vector
        try:
            with writing(sessions) as session:
                session.add(Embedding(version_id=v.id, kind=kind, dim=len(vector), vector=to_bytes(vector)))
                session.commit()
        except IntegrityError:  # another run stored the same one meanwhile
            pass
        progress((i + 1) / len(missing))
    return found


def version_factors(store: BlobStore, v: Version, averaged: bool = False) -> dict[str, algebra.Factors]:
    """A version's LoRA factors (what clustering compares). `averaged`: for a cluster adapter, which carries
    an average of factors alone: InvalidRequest naming the version when it holds more (DoRA, saved modules...)."""
    weights = v.file(algebra.WEIGHTS_FILE)
    loaded = peft_format.read(store.local_path(weights.sha256), v.adapter_config)
    if averaged and (beyond := loaded.beyond_factors(v.adapter_config)):
        raise InvalidRequest(peft_format.mixing_refusal(VersionIdentity.of(v).id, "averaging a cluster", beyond))
    return loaded.factors


def fail_interrupted(sessions: sessionmaker[Session]) -> None:
    """Runs left "running" by a hub that stopped are marked failed at start-up (nothing runs them)."""
    with writing(sessions) as session:
        session.execute(
            update(ClusterRun)
            .where(ClusterRun.status == "running")
            .values(
                status="failed",
                error="interrupted: the hub stopped before the run finished; start it again",
                finished_at=utcnow(),
            )
        )
        session.commit()


def get_run(session: Session, principal: Principal, run_id: int) -> ClusterRun:
    """A run its owner may read, and anyone once every member is public (cluster adapters' lineage links to
    their run; runs made anonymously before runs needed a token are everyone's). Its members are a record of
    that moment: read them through visible_clusters."""
    run = session.get(ClusterRun, run_id) if 1 <= run_id <= MAX_DB_ID else None
    if run is None or not (run.owner_id is None or run.owner_id == principal.user_id or all_public(session, run)):
        raise NotFound(f"cluster run {run_id} not found")
    return run


def all_public(session: Session, run: ClusterRun) -> bool:
    """Whether every member of a finished run is an adapter that is public now (none private, none gone)."""
    if run.status != "done" or not run.clusters:
        return False
    revisions = sorted({m["revision"] for c in run.clusters for m in c["members"]})
    public = 0
    for start in range(0, len(revisions), 1000):
        query = (
            select(func.count())
            .select_from(Version)
            .join(AdapterRepo, AdapterRepo.id == Version.adapter_id)
            .where(Version.revision.in_(revisions[start : start + 1000]), AdapterRepo.visibility == "public")
        )
        public += session.scalar(query)
    return public == len(revisions)


def list_runs(session: Session, principal: Principal) -> list[ClusterRun]:
    """The newest 100 runs the caller may see (get_run's rule: the caller's own, and anonymous ones)."""
    readable = ClusterRun.owner_id.is_(None)
    if principal.user_id is not None:
        readable = readable | (ClusterRun.owner_id == principal.user_id)
    return list(session.scalars(select(ClusterRun).where(readable).order_by(ClusterRun.id.desc()).limit(100)))


def visible_clusters(session: Session, principal: Principal, run: ClusterRun) -> list[dict]:
    """The run's clusters with only the members the caller may see now: a member made private, or
    deleted, since the run drops out of everyone's view but its owner's namespace."""
    clusters = run.clusters or []
    revisions = sorted({m["revision"] for c in clusters for m in c["members"]})
    readable: set[str] = set()
    for start in range(0, len(revisions), 1000):
        rows = session.execute(
            select(Version.revision, AdapterRepo.namespace_id, AdapterRepo.visibility)
            .join(AdapterRepo, AdapterRepo.id == Version.adapter_id)
            .where(Version.revision.in_(revisions[start : start + 1000]))
        )
        readable |= {rev for rev, namespace_id, visibility in rows if can_read(principal, namespace_id, visibility)}
    return [{**c, "members": [m for m in c["members"] if m["revision"] in readable]} for c in clusters]
