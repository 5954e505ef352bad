"""Removing blobs that no version references any more."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.blobs import BlobStore
from quiver_hub.registry.db import writing
from quiver_hub.registry.models import Blob, File

# A file under objects/ with no row may belong to a publish still in flight: leave young ones.
ORPHAN_GRACE_S = 3600.0


def purge_blobs(sessions: sessionmaker[Session], store: BlobStore, candidates: Iterable[str]) -> list[str]:
    """Delete the blob rows and contents among `candidates` that no file references."""
    candidates = sorted(set(candidates))
    if not candidates:
        return []
    with writing(sessions) as session:
        unreferenced = list(
            session.scalars(
                select(Blob.sha256).where(Blob.sha256.in_(candidates), ~exists().where(File.sha256 == Blob.sha256))
            )
        )
        if unreferenced:
            session.execute(delete(Blob).where(Blob.sha256.in_(unreferenced)))
        session.commit()
    for sha in unreferenced:
        store.delete(sha)
    return unreferenced


@dataclass
class GcReport:
    rows: int
    orphan_files: int
    temp_files: int


def collect_garbage(sessions: sessionmaker[Session], store: BlobStore, grace_s: float = ORPHAN_GRACE_S) -> GcReport:
    """Remove unreferenced blob rows and their content, content with no row (left by a crash
    before a commit) older than `grace_s`, and stale staging files."""
    with sessions() as session:
        all_rows = list(session.scalars(select(Blob.sha256)))
    removed = purge_blobs(sessions, store, all_rows)
    with sessions() as session:
        known = set(session.scalars(select(Blob.sha256)))
    orphans = 0
    for sha in list(store.stored()):
        path = store.path(sha)
        if sha not in known and _age(path) > grace_s:
            store.delete(sha)
            orphans += 1
    temps = 0
    for tmp in store.stale_temp_files(grace_s):
        tmp.unlink(missing_ok=True)
        temps += 1
    return GcReport(rows=len(removed), orphan_files=orphans, temp_files=temps)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
