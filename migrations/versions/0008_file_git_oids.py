"""files.oid: each file's git object id, as the Hugging Face Hub's tree lists it

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Files stored before this have none; the hub computes theirs from the blob when it lists them.
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("oid", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_column("oid")
