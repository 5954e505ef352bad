"""Cluster adapters built from a run: the exact average of each cluster's deltas (or its best rank-r
approximation), published as ordinary adapters."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

from safetensors.torch import save
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.accounts.access import Principal, require_write_token
from quiver_hub.registry.catalogue.metadata import AdapterMeta
from quiver_hub.registry.catalogue.publishing import publish
from quiver_hub.registry.clusters.runs import get_run, identity, version_factors, visible_clusters
from quiver_hub.registry.errors import Conflict, InvalidRequest
from quiver_hub.registry.lora import algebra
from quiver_hub.registry.models import Version
from quiver_hub.registry.search.embedder import TextEmbedder
from quiver_hub.registry.storage.blobs import BlobStore, StagedFile


@dataclass(frozen=True)
class MergeMember:
    identity: dict
    task: str | None
    config: dict
    factors: dict[str, algebra.Factors]


def merge_run(
    sessions: sessionmaker[Session],
    store: BlobStore,
    embedder: TextEmbedder,
    principal: Principal,
    run_id: int,
    rank: int | None,
) -> list[Version]:
    """Publish one adapter per cluster in the caller's namespace, `cluster-<run>-<index>`: the exact
    average of its members' deltas, as concatenated factors (rank None) or its best rank-`rank`
    approximation. Each records its lineage."""
    require_write_token(principal, "publishing cluster adapters")
    if rank is not None and not 1 <= rank <= 1024:
        raise InvalidRequest(f"rank must be between 1 and 1024, got {rank}")
    with sessions() as session:
        run = get_run(session, principal, run_id)
        if run.status != "done":
            raise Conflict(f"cluster run {run_id} is {run.status}; merge it once it is done")
        groups: list[tuple[int, list[MergeMember]]] = []
        for c in visible_clusters(session, principal, run):  # only what the caller may see now
            members = []
            for m in c["members"]:
                v = session.scalar(select(Version).where(Version.revision == m["revision"]))
                factors = version_factors(store, v, averaged=True)
                members.append(MergeMember(identity(v), v.adapter.task, v.adapter_config, factors))
            if members:
                groups.append((c["index"], members))
        if not groups:
            raise Conflict(f"no member of cluster run {run_id} is still there for you to merge; run it again")
        base_model = run.base_model
    published = []
    for index, members in groups:
        files, config = cluster_adapter_files(store, members, base_model, rank)
        names = [m.identity["id"] for m in members]
        lineage = {
            "run": run_id,
            "cluster": index,
            "method": "svd" if rank else "concat",
            "rank": config["r"],
            "versions": [m.identity for m in members],
        }
        tasks = sorted({m.task for m in members if m.task})
        meta = AdapterMeta(
            description=f"Cluster {index} of MBC run {run_id}: the average of {len(members)} adapters "
            f"({', '.join(names)[:400]}).",
            tags=["mbc-cluster", f"run-{run_id}"],
            task=tasks[0] if len(tasks) == 1 else None,
        )
        published.append(
            publish(
                sessions,
                store,
                principal,
                principal.user,
                f"cluster-{run_id}-{index}",
                files,
                meta,
                embedder,
                derived_from=lineage,
            )
        )
    return published


def cluster_adapter_files(
    store: BlobStore, members: list[MergeMember], base_model: str, rank: int | None
) -> tuple[dict[str, StagedFile], dict]:
    """adapter_config.json and adapter_model.safetensors of the averaged adapter, staged."""
    fan = {bool(m.config.get("fan_in_fan_out")) for m in members}
    if len(fan) > 1:
        raise InvalidRequest("members disagree on fan_in_fan_out; they cannot be averaged into one adapter")
    n = len(members)
    merged = algebra.weighted_sum([m.factors for m in members], [1.0 / n] * n, rank)
    task_types = {m.config.get("task_type") for m in members}
    config, tensors = algebra.adapter_files(
        merged, base_model, fan.pop(), task_types.pop() if len(task_types) == 1 else None
    )
    staged = {
        algebra.CONFIG_FILE: store.stage(io.BytesIO(json.dumps(config, indent=2).encode())),
        algebra.WEIGHTS_FILE: store.stage(io.BytesIO(save(tensors))),
    }
    return staged, config
