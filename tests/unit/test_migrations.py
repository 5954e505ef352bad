"""The schema comes only from Alembic, and the migrations agree with the models."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from quiver_hub.migrations import alembic_config, upgrade
from quiver_hub.registry.db import make_engine
from quiver_hub.registry.models import Base


def test_migrations_match_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
            tables = set(inspect(conn).get_table_names())
        assert diff == [], f"models and migrations disagree: {diff}"
        assert tables == set(Base.metadata.tables) | {"alembic_version"}
        upgrade(engine)  # applying again is a no-op
    finally:
        engine.dispose()


def test_downgrade_removes_everything(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        command.downgrade(alembic_config(engine), "base")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        upgrade(engine)
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) >= set(Base.metadata.tables)
    finally:
        engine.dispose()
