"""The change sequence: every publish, edit and delete appends a row naming the adapter, in the same
transaction, so that each hub process can bring its derived indexes up to date (registry.search.indexes)."""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from quiver_hub.registry.models import Change

# Postgres hands out sequence numbers before commit, so a later number can commit first and a reader
# could skip the earlier one. Writers take this transaction-scoped lock before appending, which makes
# commit order equal sequence order. (SQLite serialises writers anyway.)
_CHANGE_LOCK = 0x5155_4956  # "QUIV"


def record_change(session: Session, adapter_id: int) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHANGE_LOCK})
    session.add(Change(adapter_id=adapter_id))
    session.flush()


def last_seq(session: Session) -> int:
    return session.scalar(select(func.coalesce(func.max(Change.seq), 0)))


def changed_since(session: Session, seq: int) -> tuple[int, set[int]]:
    """(the newest seq, the adapters changed after `seq`), read in pages of 10,000 changes."""
    changed: set[int] = set()
    while True:
        rows = session.execute(
            select(Change.seq, Change.adapter_id).where(Change.seq > seq).order_by(Change.seq).limit(10_000)
        ).all()
        if not rows:
            return seq, changed
        seq = rows[-1][0]
        changed.update(adapter_id for _, adapter_id in rows)
