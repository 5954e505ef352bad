"""Alembic migrations: the only way Quiver's schema is created or changed (SQLite and Postgres).

The hub applies them where it starts (`quiver serve`, `quiver migrate`); the registry never does.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

HERE = Path(__file__).parent


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`: the one way tables are created or changed."""
    command.upgrade(alembic_config(engine), revision)
