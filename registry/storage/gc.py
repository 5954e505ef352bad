"""Removing blobs that no version references any more."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.db import writing
from quiver_hub.registry.models import Blob, File
from quiver_hub.registry.storage.blobs import BlobStore

# A file under objects/ with no row may belong to a publish still in flight: leave young ones.
ORPHAN_GRACE_S = 3600.0
BATCH = 1000  # blobs per transaction: bounded statements, and locks held briefly


def purge_blobs(sessions: sessionmaker[Session], store: BlobStore, candidates: Iterable[str]) -> list[str]:
    """Delete the blob rows and contents among `candidates` that no file references.

    The rows are locked first (FOR UPDATE; SQLite's write lock does the same), so a publish that holds
    them (writes.hold_blobs) finishes first and its references are seen; the contents are removed before
    the locks are released, so a publish that waited re-creates the row and installs its own copy after
    the removal, never before it.
    """
    candidates = sorted(set(candidates))
    removed: list[str] = []
    for start in range(0, len(candidates), BATCH):
        batch = candidates[start : start + BATCH]
        with writing(sessions) as session:
            session.execute(select(Blob.sha256).where(Blob.sha256.in_(batch)).order_by(Blob.sha256).with_for_update())
            unreferenced = list(
                session.scalars(
                    select(Blob.sha256).where(Blob.sha256.in_(batch), ~exists().where(File.sha256 == Blob.sha256))
                )
            )
            if unreferenced:
                session.execute(delete(Blob).where(Blob.sha256.in_(unreferenced)))
                for sha in unreferenced:
                    store.delete(sha)
            session.commit()
        removed += unreferenced
    return removed


@dataclass
class GcReport:
    rows: int
    orphan_files: int
    temp_files: int
    abandoned_uploads: int = 0


def collect_garbage(sessions: sessionmaker[Session], store: BlobStore, grace_s: float = ORPHAN_GRACE_S) -> GcReport:
    """Remove unreferenced blob rows and their content, content with no row (left by a crash
    before a commit) older than `grace_s`, stale staging files, and an object store's uploads a crash
    left in parts."""
    removed: list[str] = []
    after = ""
    while True:  # every row, a page at a time (keyset: no query grows with the store)
        with sessions() as session:
            page = list(
                session.scalars(select(Blob.sha256).where(Blob.sha256 > after).order_by(Blob.sha256).limit(BATCH))
            )
        if not page:
            break
        removed += purge_blobs(sessions, store, page)
        after = page[-1]
    orphans = 0
    old = ((sha, age) for sha, age in store.stored() if age > grace_s)
    while chunk := list(itertools.islice(old, BATCH)):
        with sessions() as session:
            known = set(session.scalars(select(Blob.sha256).where(Blob.sha256.in_([sha for sha, _ in chunk]))))
        for sha, _ in chunk:
            if sha not in known:
                store.delete(sha)
                orphans += 1
    temps = 0
    for tmp in store.stale_temp_files(grace_s):
        tmp.unlink(missing_ok=True)
        temps += 1
    aborted = store.abandoned_uploads(grace_s)
    return GcReport(rows=len(removed), orphan_files=orphans, temp_files=temps, abandoned_uploads=aborted)
