"""What the hub process holds for its lifetime (`Services`): the database sessions, the blob store, the
embedder, the search indexes, the settings."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.hub.settings import Settings
from quiver_hub.migrations import upgrade
from quiver_hub.registry.blobs import BlobStore
from quiver_hub.registry.cluster_runs import fail_interrupted
from quiver_hub.registry.db import make_engine, session_factory
from quiver_hub.registry.embedder import TextEmbedder, default_embedder
from quiver_hub.registry.indexes import IndexSet


def open_store(settings: Settings) -> BlobStore:
    """The blob store the settings name: the local directory under QUIVER_HOME, or an S3 bucket."""
    if settings.blob_url is None:
        return BlobStore(settings.blob_root)
    from quiver_hub.registry.blobs_s3 import S3BlobStore

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

    @classmethod
    def open(cls, settings: Settings, migrate: bool = True, index: bool = False) -> Services:
        """Connect (and migrate); with index=True also build the search indexes from the database."""
        engine = make_engine(settings.db_url)
        if migrate:
            upgrade(engine)
        state = cls(settings, engine, session_factory(engine), open_store(settings), default_embedder(), IndexSet())
        if index:  # serving: build the search indexes; runs a stopped hub left behind cannot finish
            state.indexes.rebuild(state.sessions)
            fail_interrupted(state.sessions)
        return state

    def background(self, job: Callable[[], None]) -> None:
        """Long work (large cluster runs), one at a time, off the request path."""
        self.jobs.submit(job)

    def fresh_indexes(self) -> IndexSet:
        """The indexes, brought up to date with the change sequence (this and other hub processes)."""
        self.indexes.refresh(self.sessions)
        return self.indexes

    def close(self) -> None:
        self.jobs.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()
