"""What the hub process holds for its lifetime (`Services`): the database sessions, the blob store, the
embedder, the search indexes, the settings."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.hub.settings import Settings, secret_key
from quiver_hub.migrations import upgrade
from quiver_hub.registry.clusters.runs import fail_interrupted
from quiver_hub.registry.db import make_engine, session_factory
from quiver_hub.registry.search.embedder import TextEmbedder, default_embedder
from quiver_hub.registry.search.indexes import IndexSet
from quiver_hub.registry.search.row_store import Spill
from quiver_hub.registry.search.snapshot import Opened, open_indexes, save
from quiver_hub.registry.storage.blobs import BlobStore

log = logging.getLogger("quiver.indexes")
SAVE_EVERY = 1000  # changes applied since the last snapshot before the next is written (in the background)


def open_store(settings: Settings) -> BlobStore:
    """The blob store the settings name: the local directory under QUIVER_HOME, or an S3 bucket."""
    if settings.blob_url is None:
        return BlobStore(settings.blob_root)
    from quiver_hub.registry.storage.s3 import S3BlobStore

    return S3BlobStore(
        settings.blob_url,
        settings.blob_root,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        public_endpoint_url=settings.s3_public_endpoint_url,
        cache_bytes=settings.blob_cache_bytes,
    )


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: BlobStore
    embedder: TextEmbedder
    indexes: IndexSet
    jobs: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="quiver-job"))
    saves: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="quiver-save"))
    opened: Opened | None = None  # how the indexes were made at start-up (None: not serving)
    saved_seq: int = 0  # the change sequence number of the last snapshot written or being written
    written_seq: int | None = None  # that of the last snapshot this process knows is good on disk

    @classmethod
    def open(cls, settings: Settings, migrate: bool = True, index: bool = False) -> Services:
        """Connect (and migrate); with index=True (serving) also open the search indexes: the snapshot in
        QUIVER_HOME/indexes caught up from the change sequence, or built from the database."""
        engine = make_engine(settings.db_url)
        if migrate:
            upgrade(engine)
        sessions = session_factory(engine)
        indexes, opened = (
            open_indexes(
                sessions,
                settings.index_dir,
                secret_key(settings),
                settings.route_modules,
                Spill(settings.index_dir, settings.index_spill_bytes),
            )
            if index
            else (IndexSet(), None)
        )
        state = cls(settings, engine, sessions, open_store(settings), default_embedder(), indexes)
        if opened is not None:  # serving; runs a stopped hub left behind cannot finish
            state.opened = opened
            if opened.from_snapshot:
                log.info("search indexes: snapshot at change %d, caught up %d", opened.snapshot_seq, opened.caught_up)
                state.written_seq = opened.snapshot_seq  # checked as it was loaded
            if not opened.from_snapshot or opened.caught_up:
                state.saves.submit(state.save_indexes)
            state.saved_seq = indexes.seq
            fail_interrupted(state.sessions)
        return state

    def background(self, job: Callable[[], None]) -> None:
        """Long work (large cluster runs), one at a time, off the request path."""
        self.jobs.submit(job)

    def fresh_indexes(self) -> IndexSet:
        """The indexes, brought up to date with the change sequence (this and other hub processes)."""
        self.indexes.refresh(self.sessions)
        if self.opened is not None and self.indexes.seq - self.saved_seq >= SAVE_EVERY:
            self.saved_seq = self.indexes.seq
            self.saves.submit(self.save_indexes)
        return self.indexes

    def save_indexes(self) -> None:
        """Snapshot the indexes (registry.search.snapshot), so the next start only catches up. A failure
        (a full disk) is logged, not raised: the snapshot is derived state, the next start rebuilds."""
        try:
            self.written_seq = save(self.indexes, self.settings.index_dir, self.sessions, secret_key(self.settings))
        except Exception:
            log.exception("search indexes: snapshot not saved")

    def close(self) -> None:
        self.jobs.shutdown(wait=False, cancel_futures=True)
        self.saves.shutdown(wait=True, cancel_futures=True)  # a save in flight ends (seconds) before the last
        if self.opened is not None:  # the next start catches up only what changes after this
            try:
                self.indexes.refresh(self.sessions)
            except Exception:  # the database is gone: the next start catches up what this one missed
                log.exception("search indexes: not brought up to date at shutdown")
            if self.written_seq != self.indexes.seq:  # also when the save after start was cancelled
                self.save_indexes()
        self.engine.dispose()
