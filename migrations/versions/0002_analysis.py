"""analysis: prototypes, embeddings, change sequence

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 22:31:44.348373
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "changes",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_changes")),
    )
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_changes_adapter_id"), ["adapter_id"], unique=False)

    op.create_table(
        "embeddings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name=op.f("fk_embeddings_version_id_versions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_embeddings")),
        sa.UniqueConstraint("version_id", "kind", name=op.f("uq_embeddings_version_id")),
    )
    with op.batch_alter_table("embeddings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_embeddings_version_id"), ["version_id"], unique=False)

    op.create_table(
        "prototypes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("module", sa.String(length=255), nullable=False),
        sa.Column("in_features", sa.Integer(), nullable=False),
        sa.Column("sigma", sa.Float(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name=op.f("fk_prototypes_version_id_versions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prototypes")),
        sa.UniqueConstraint("version_id", "module", name=op.f("uq_prototypes_version_id")),
    )
    with op.batch_alter_table("prototypes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_prototypes_version_id"), ["version_id"], unique=False)

    with op.batch_alter_table("adapters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("text_embedding", sa.LargeBinary(), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("adapters", schema=None) as batch_op:
        batch_op.drop_column("text_embedding")

    with op.batch_alter_table("prototypes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prototypes_version_id"))

    op.drop_table("prototypes")
    with op.batch_alter_table("embeddings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_embeddings_version_id"))

    op.drop_table("embeddings")
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_changes_adapter_id"))

    op.drop_table("changes")
