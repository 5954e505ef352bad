"""FAISS indexes over the registry's embeddings: derived state, never the only copy of anything.

- prototypes, one exact inner-product index per (base_model, module);
- text (MiniLM of description, task, tags, card) and examples (mean MiniLM of examples.jsonl).
Each holds the latest version of every adapter, keyed by version id. Built from the database at
start-up; before each query `refresh` applies the change sequence, which also picks up what other
hub processes sharing the database published or deleted. Visibility and filters are applied inside
the search with an ID selector, so an adapter the caller may not see never takes a visible one's place.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import faiss
import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from registry.accounts import Principal, can_read
from registry.catalog import VersionIdentity
from registry.changes import changed_since, last_seq
from registry.embedder import DIM as TEXT_DIM
from registry.models import Adapter, Embedding, Namespace, Prototype, Version
from registry.vectors import from_bytes


class FlatIndex:
    """Exact inner-product search over float32 vectors with int64 ids (IndexIDMap2 over IndexFlatIP)."""

    def __init__(self, dim: int):
        self.dim = dim
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.ids: set[int] = set()

    def add(self, ids: list[int], vectors: np.ndarray) -> None:
        if ids:
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
            self.ids.update(ids)

    def remove(self, ids: Iterable[int]) -> None:
        present = [i for i in ids if i in self.ids]
        if present:
            self.index.remove_ids(np.asarray(present, dtype=np.int64))
            self.ids.difference_update(present)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner products among the ids in `allowed` (int64); rows padded with id -1 past the end."""
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)

    def memory_bytes(self) -> int:
        return self.index.ntotal * self.dim * 4


@dataclass(frozen=True)
class Entry:
    """What the indexes know of an adapter's latest version, for filtering and answering."""

    identity: VersionIdentity
    version_id: int
    adapter_id: int
    namespace_id: int
    namespace: str
    visibility: str
    base_model: str
    task: str | None
    tags: frozenset[str]
    modules: frozenset[str]


@dataclass(frozen=True)
class Filters:
    base_model: str | None = None
    task: str | None = None
    tags: tuple[str, ...] = ()
    namespace: str | None = None

    def match(self, e: Entry) -> bool:
        return (
            (self.base_model is None or e.base_model == self.base_model)
            and (self.task is None or e.task == self.task)
            and (self.namespace is None or e.namespace == self.namespace)
            and all(t in e.tags for t in self.tags)
        )


class IndexSet:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._clear()

    def _clear(self) -> None:
        self.entries: dict[int, Entry] = {}  # by adapter id
        self.prototypes: dict[tuple[str, str], FlatIndex] = {}
        self.text = FlatIndex(TEXT_DIM)
        self.examples = FlatIndex(TEXT_DIM)
        self.seq = 0

    # -- keeping in step with the database --

    def rebuild(self, sessions: sessionmaker[Session]) -> None:
        with self.lock, sessions() as session:
            self._clear()
            self.seq = last_seq(session)  # read first: later changes are re-applied, reloading is idempotent
            self._load(session, None)

    def refresh(self, sessions: sessionmaker[Session]) -> None:
        with self.lock, sessions() as session:
            seq, changed = changed_since(session, self.seq)
            if changed:
                for adapter_id in changed:
                    self._remove(adapter_id)
                self._load(session, changed)
            self.seq = seq

    def _remove(self, adapter_id: int) -> None:
        entry = self.entries.pop(adapter_id, None)
        if entry is None:
            return
        for module in entry.modules:
            self.prototypes[(entry.base_model, module)].remove([entry.version_id])
        self.text.remove([entry.version_id])
        self.examples.remove([entry.version_id])

    def _load(self, session: Session, adapter_ids: set[int] | None) -> None:
        """Index the latest version of the given adapters (all when None)."""
        newest = select(Version.adapter_id, func.max(Version.number).label("number")).group_by(Version.adapter_id)
        if adapter_ids is not None:
            newest = newest.where(Version.adapter_id.in_(adapter_ids))
        newest = newest.subquery()
        rows = session.execute(
            select(Version, Adapter, Namespace.name)
            .join(newest, (Version.adapter_id == newest.c.adapter_id) & (Version.number == newest.c.number))
            .join(Adapter, Adapter.id == Version.adapter_id)
            .join(Namespace, Namespace.id == Adapter.namespace_id)
        ).all()
        if not rows:
            return
        version_ids = [v.id for v, _, _ in rows]
        protos: dict[int, list[Prototype]] = {}
        for p in session.scalars(select(Prototype).where(Prototype.version_id.in_(version_ids))):
            protos.setdefault(p.version_id, []).append(p)
        examples = {
            e.version_id: e.vector
            for e in session.scalars(
                select(Embedding).where(Embedding.version_id.in_(version_ids), Embedding.kind == "examples")
            )
        }
        by_module: dict[tuple[str, str], tuple[list[int], list[np.ndarray]]] = {}
        text_ids, text_vecs, ex_ids, ex_vecs = [], [], [], []
        for version, adapter, ns_name in rows:
            mine = protos.get(version.id, [])
            self.entries[adapter.id] = Entry(
                identity=VersionIdentity(f"{ns_name}/{adapter.name}", version.number, version.revision),
                version_id=version.id,
                adapter_id=adapter.id,
                namespace_id=adapter.namespace_id,
                namespace=ns_name,
                visibility=adapter.visibility,
                base_model=version.base_model,
                task=adapter.task,
                tags=frozenset(adapter.tags or ()),
                modules=frozenset(p.module for p in mine),
            )
            for p in mine:
                ids, vecs = by_module.setdefault((version.base_model, p.module), ([], []))
                ids.append(version.id)
                vecs.append(from_bytes(p.vector))
            if adapter.text_embedding is not None:
                text_ids.append(version.id)
                text_vecs.append(from_bytes(adapter.text_embedding))
            if version.id in examples:
                ex_ids.append(version.id)
                ex_vecs.append(from_bytes(examples[version.id]))
        for key, (ids, vecs) in by_module.items():
            if key not in self.prototypes:
                self.prototypes[key] = FlatIndex(len(vecs[0]))
            self.prototypes[key].add(ids, np.stack(vecs))
        if text_ids:
            self.text.add(text_ids, np.stack(text_vecs))
        if ex_ids:
            self.examples.add(ex_ids, np.stack(ex_vecs))

    # -- what a caller may search --

    def visible(self, principal: Principal, filters: Filters) -> dict[int, Entry]:
        """The entries the caller may see that match the filters, by version id."""
        return {
            e.version_id: e
            for e in self.entries.values()
            if can_read(principal, e.namespace_id, e.visibility) and filters.match(e)
        }

    def memory_bytes(self) -> int:
        return (
            sum(i.memory_bytes() for i in self.prototypes.values())
            + self.text.memory_bytes()
            + (self.examples.memory_bytes())
        )
