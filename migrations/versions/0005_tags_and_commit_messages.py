"""tags naming versions, and each version's commit title and message

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tags",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapters.id"], name=op.f("fk_tags_adapter_id_adapters"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name=op.f("fk_tags_version_id_versions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tags")),
        sa.UniqueConstraint("adapter_id", "name", name=op.f("uq_tags_adapter_id")),
    )
    op.create_index(op.f("ix_tags_adapter_id"), "tags", ["adapter_id"], unique=False)
    op.create_index(op.f("ix_tags_version_id"), "tags", ["version_id"], unique=False)
    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("title", sa.String(length=255), nullable=False, server_default=""))
        batch.add_column(sa.Column("message", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("message")
        batch.drop_column("title")
    op.drop_index(op.f("ix_tags_version_id"), table_name="tags")
    op.drop_index(op.f("ix_tags_adapter_id"), table_name="tags")
    op.drop_table("tags")
