"""tokens people manage (names, expiry, namespaces, revocation), member roles, disabled users, audit log

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("name", sa.String(length=64), nullable=False, server_default=""))
        batch.add_column(sa.Column("hint", sa.String(length=16), nullable=False, server_default=""))
        batch.add_column(sa.Column("namespaces", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("namespaces") as batch:
        batch.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("memberships") as batch:
        # Members before roles existed could publish: they keep that (write); operators name admins.
        batch.add_column(sa.Column("role", sa.String(length=8), nullable=False, server_default="write"))
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=96), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("namespace_id", sa.Integer(), nullable=True),
        sa.Column("namespace", sa.String(length=96), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_actor_id"), "audit_events", ["actor_id"], unique=False)
    op.create_index(op.f("ix_audit_events_namespace_id"), "audit_events", ["namespace_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_events_namespace_id"), table_name="audit_events")
    op.drop_index(op.f("ix_audit_events_actor_id"), table_name="audit_events")
    op.drop_table("audit_events")
    with op.batch_alter_table("memberships") as batch:
        batch.drop_column("role")
    with op.batch_alter_table("namespaces") as batch:
        batch.drop_column("disabled_at")
    with op.batch_alter_table("tokens") as batch:
        for column in ("revoked_at", "last_used_at", "expires_at", "namespaces", "hint", "name"):
            batch.drop_column(column)
