"""Engines and sessions, for SQLite and Postgres alike (the schema itself comes from quiver_hub.migrations)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

WRITE_OPTION = "quiver_write"


def make_engine(url: str) -> Engine:
    """An engine with the settings Quiver relies on (foreign keys and WAL on SQLite)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" event below emits BEGIN itself
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # noqa: ANN001
            # A write transaction takes SQLite's write lock up front (waiting up to the timeout), so
            # two writers never both read the same state and then fail to upgrade their locks.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True)


@contextmanager
def writing(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for a read-modify-write transaction (BEGIN IMMEDIATE on SQLite; row locks do the
    rest on Postgres)."""
    with sessions() as session:
        session.connection(execution_options={WRITE_OPTION: True})
        yield session


def begin_write(session: Session) -> None:
    """End what `session` was reading and start a write transaction. On SQLite a read transaction
    cannot become a write one once another writer has committed since it began (SQLITE_BUSY at once,
    whatever the timeout), so a write after reads starts afresh, waiting for the lock up front."""
    session.commit()
    session.connection(execution_options={WRITE_OPTION: True})


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def upsert(session: Session):  # noqa: ANN201
    """The dialect's INSERT, which has ON CONFLICT."""
    return {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[session.get_bind().dialect.name]
