"""Alembic migrations: the only way Quiver's schema is created or changed (SQLite and Postgres)."""
