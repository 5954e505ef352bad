"""Parameter and output sketches drawn anew (algebra.SKETCH_DRAW 2): float32 Gaussians, R and L each
from its own seed, so a publish draws a fifth as much, six times faster. Sketches of the first draw do
not compare with the new ones, so they are deleted; a cluster run computes and stores what is missing
from the version's weights.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 21:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DELETE FROM embeddings WHERE kind IN ('sketch', 'outputs')")


def downgrade() -> None:
    # The earlier code would compare these with its own draw, silently wrong: they are deleted. It
    # recomputes missing output sketches; its "sketch" method refuses versions without one.
    op.execute("DELETE FROM embeddings WHERE kind IN ('sketch', 'outputs')")
