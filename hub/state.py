"""What the app holds for its lifetime: the database sessions, the blob store, the settings."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from hub.settings import Settings
from registry.blobs import BlobStore
from registry.db import make_engine, session_factory, upgrade
from registry.embedder import TextEmbedder, default_embedder
from registry.indexes import IndexSet


@dataclass
class HubState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: BlobStore
    embedder: TextEmbedder
    indexes: IndexSet

    @classmethod
    def open(cls, settings: Settings, migrate: bool = True, index: bool = False) -> HubState:
        """Connect (and migrate); with index=True also build the search indexes from the database."""
        engine = make_engine(settings.db_url)
        if migrate:
            upgrade(engine)
        state = cls(
            settings, engine, session_factory(engine), BlobStore(settings.blob_root), default_embedder(), IndexSet()
        )
        if index:
            state.indexes.rebuild(state.sessions)
        return state

    def fresh_indexes(self) -> IndexSet:
        """The indexes, brought up to date with the change sequence (this and other hub processes)."""
        self.indexes.refresh(self.sessions)
        return self.indexes

    def close(self) -> None:
        self.engine.dispose()
