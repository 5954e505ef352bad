"""What the app holds for its lifetime: the database sessions, the blob store, the settings."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from hub.settings import Settings
from registry.blobs import BlobStore
from registry.db import make_engine, session_factory, upgrade


@dataclass
class HubState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: BlobStore

    @classmethod
    def open(cls, settings: Settings, migrate: bool = True) -> HubState:
        engine = make_engine(settings.db_url)
        if migrate:
            upgrade(engine)
        return cls(settings, engine, session_factory(engine), BlobStore(settings.blob_root))

    def close(self) -> None:
        self.engine.dispose()
