"""retired names (version numbers never come back) and the module shapes of base models

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "retired_names",
        sa.Column("namespace_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=96), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
        sa.Column("moved_to", sa.Integer(), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["namespace_id"],
            ["namespaces.id"],
            name=op.f("fk_retired_names_namespace_id_namespaces"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["moved_to"], ["adapters.id"], name=op.f("fk_retired_names_moved_to_adapters"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("namespace_id", "name", name=op.f("pk_retired_names")),
    )
    op.create_table(
        "base_model_modules",
        sa.Column("base_model", sa.String(length=255), nullable=False),
        sa.Column("module", sa.String(length=255), nullable=False),
        sa.Column("in_features", sa.Integer(), nullable=False),
        sa.Column("out_features", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("base_model", "module", name=op.f("pk_base_model_modules")),
    )


def downgrade() -> None:
    op.drop_table("base_model_modules")
    op.drop_table("retired_names")
