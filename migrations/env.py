"""Alembic environment. The engine comes from quiver_hub.migrations.upgrade (config.attributes["engine"]),
or from QUIVER_DATABASE_URL when alembic is run by hand."""

import os

from alembic import context
from sqlalchemy import create_engine

from quiver_hub.registry.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    engine = create_engine(os.environ.get("QUIVER_DATABASE_URL", "sqlite:///.quiver/quiver.db"))

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
