"""The search indexes over the registry's embeddings: derived state, never the only copy of anything.

- prototypes, one PrototypeIndex (exact top-k of |<h, v>| through int8 codes) per (base_model, module,
  in_features): keyed by width too, so an adapter whose module widths disagree with the others' lands in
  an index of its own and can never make a search (or a restart) fail;
- text (MiniLM of description, task, tags, card) and examples (mean MiniLM of examples.jsonl).
Each holds the latest version of every adapter, keyed by version id. Built from the database at
start-up; before each query `refresh` applies the change sequence, which also picks up what other
hub processes sharing the database published, edited or deleted.

Every index is partitioned by visibility: one partition of public adapters, and one per namespace for
its private adapters. A caller searches only the partitions it may see, so an adapter it may not see
can never take a visible one's place. Filters (task, tags, namespace; base model for text) are
applied inside the search (an ID selector for FAISS, a mask of rows for prototypes), only where they
exclude something.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace

import faiss
import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.accounts.access import Principal
from quiver_hub.registry.catalogue.change_feed import changed_since, last_seq
from quiver_hub.registry.catalogue.reads import VersionIdentity
from quiver_hub.registry.memory import release_freed_memory
from quiver_hub.registry.models import AdapterRepo, Embedding, Namespace, Prototype, Version
from quiver_hub.registry.search.embedder import DIM as TEXT_DIM
from quiver_hub.registry.search.prototype_index import PrototypeIndex
from quiver_hub.registry.search.route_modules import ModuleChoice
from quiver_hub.registry.search.row_store import Spill
from quiver_hub.registry.search.vectors import from_bytes

PUBLIC = 0  # the partition of public adapters; private ones live in their namespace id's partition
LOAD_BATCH = 1000  # adapters read per query when (re)building
PROTOTYPE_CHUNK = 2000  # prototype rows read, and indexed, at a time
# A FAISS search (text and examples: one query each) smaller than this many multiply-adds runs on one
# thread: starting OpenMP's team costs more than it saves (2-core EPYC, 32 queries of 512: 1,000
# vectors 1.1 ms on one thread, 2.9 ms on two; 10,000 vectors 10.6 and 5.7 ms), and on a busy machine
# far more (224 small searches took 1.1-1.7 s on two threads, 0.17 s on one, while another process
# used the cores).
ONE_THREAD_WORK = 64_000_000


class FlatIndex:
    """Exact inner-product search over float32 vectors with int64 ids (IndexIDMap2 over IndexFlatIP)."""

    def __init__(self, dim: int):
        self.dim = dim
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.ids: set[int] = set()

    @classmethod
    def from_arrays(cls, ids: np.ndarray, vectors: np.ndarray) -> FlatIndex:
        index = cls(vectors.shape[1])
        index.add(ids.tolist(), vectors)
        return index

    def add(self, ids: list[int], vectors: np.ndarray) -> None:
        if ids:
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
            self.ids.update(ids)

    def remove(self, ids: Iterable[int]) -> None:
        present = [i for i in ids if i in self.ids]
        if present:
            self.index.remove_ids(np.asarray(present, dtype=np.int64))
            self.ids.difference_update(present)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner products (among the ids in `allowed` when given); rows are padded with id -1
        when fewer than k qualify."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        params = None if allowed is None else faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))  # type: ignore[call-arg]
        if queries.shape[0] * self.index.ntotal * self.dim >= ONE_THREAD_WORK:
            return self.index.search(queries, k, params=params)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # OpenMP's setting is the calling thread's own: no other search sees it
        try:
            return self.index.search(queries, k, params=params)
        finally:
            faiss.omp_set_num_threads(threads)

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 vectors): what a snapshot saves."""
        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        return ids, self.index.index.reconstruct_n(0, self.index.ntotal).reshape(-1, self.dim)

    def memory_bytes(self) -> int:
        return self.index.ntotal * self.dim * 4

    def file_bytes(self) -> int:
        return 0  # FAISS holds its vectors in memory (384 values an adapter)


class PartitionedIndex:
    """One index per visibility partition: FlatIndex (text, examples) or PrototypeIndex."""

    def __init__(self, dim: int, kind: type[FlatIndex] | type[PrototypeIndex] = FlatIndex, spill: Spill | None = None):
        """spill: where a PrototypeIndex keeps its rows once large (row_store.Spill; not for FlatIndex)."""
        self.dim = dim
        self.kind = kind
        self.spill = spill
        self.parts: dict[int, FlatIndex | PrototypeIndex] = {}

    def make(self, ids: np.ndarray, vectors: np.ndarray) -> FlatIndex | PrototypeIndex:
        """A partition of these rows (a snapshot's)."""
        if self.kind is PrototypeIndex:
            return PrototypeIndex.from_arrays(ids, vectors, self.spill)
        return self.kind.from_arrays(ids, vectors)

    def add(self, partition: int, ids: list[int], vectors: np.ndarray) -> None:
        if partition not in self.parts:
            self.parts[partition] = (
                PrototypeIndex(self.dim, self.spill) if self.kind is PrototypeIndex else FlatIndex(self.dim)
            )
        self.parts[partition].add(ids, vectors)

    def remove(self, partition: int, version_id: int) -> None:
        if partition in self.parts:
            self.parts[partition].remove([version_id])

    def readable(self, principal: Principal) -> list[FlatIndex | PrototypeIndex]:
        """The partitions the principal may search: public, and the private ones of its namespaces."""
        keys = [PUBLIC, *sorted(principal.namespace_ids)]
        return [self.parts[k] for k in keys if k in self.parts and self.parts[k].ids]

    def memory_bytes(self) -> int:
        return sum(p.memory_bytes() for p in self.parts.values())

    def file_bytes(self) -> int:
        return sum(p.file_bytes() for p in self.parts.values())


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
    modules: frozenset[tuple[str, int]]  # (module, in_features) of its prototypes

    @property
    def partition(self) -> int:
        return PUBLIC if self.visibility == "public" else self.namespace_id


@dataclass(frozen=True)
class Filters:
    base_model: str | None = None
    task: str | None = None
    tags: tuple[str, ...] = ()
    namespace: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.base_model or self.task or self.tags or self.namespace)

    def match(self, e: Entry) -> bool:
        return (
            (self.base_model is None or e.base_model == self.base_model)
            and (self.task is None or e.task == self.task)
            and (self.namespace is None or e.namespace == self.namespace)
            and all(t in e.tags for t in self.tags)
        )


@dataclass(frozen=True)
class Candidates:
    """One partition to search: its index, and the allowed ids (None: all of them)."""

    index: FlatIndex | PrototypeIndex
    allowed: np.ndarray | None
    count: int


class IndexSet:
    def __init__(self, route_modules: str = "", spill: Spill | None = None) -> None:
        """route_modules: the modules routed on (a ModuleChoice's expression; "" or ".*": every module).
        Only their prototypes are indexed, or, for an adapter that adapts none of them, all of its own.
        The database keeps every module's prototype, so another expression takes effect at the next start.
        spill: where and from what size a module's float32 prototypes live in a file (row_store)."""
        self.lock = threading.RLock()
        self.route_modules = route_modules
        self.spill = spill
        self.choice = ModuleChoice(route_modules)
        self.clear()

    def clear(self) -> None:
        self.entries: dict[int, Entry] = {}  # by adapter id
        self.by_version: dict[int, Entry] = {}
        self.prototypes: dict[tuple[str, str, int], PartitionedIndex] = {}  # (base model, module, width)
        self.text = PartitionedIndex(TEXT_DIM)
        self.examples = PartitionedIndex(TEXT_DIM)
        self.seq = 0
        self._module_sets: dict[frozenset[tuple[str, int]], frozenset[tuple[str, int]]] = {}

    def prototype_index(self, key: tuple[str, str, int]) -> PartitionedIndex:
        """The prototypes of (base model, module, in_features), made empty the first time."""
        if key not in self.prototypes:
            self.prototypes[key] = PartitionedIndex(key[2], PrototypeIndex, self.spill)
        return self.prototypes[key]

    def module_set(self, modules: Iterable[tuple[str, int]]) -> frozenset[tuple[str, int]]:
        """One shared frozenset per distinct set of (module, in_features): adapters of one form (most of a
        library) hold the same object, which costs one copy and lets a route count each form's routed
        modules once (routing.route)."""
        found = frozenset(modules)
        return self._module_sets.setdefault(found, found)

    # -- keeping in step with the database --

    def rebuild(self, sessions: sessionmaker[Session]) -> None:
        """Every adapter's latest version, read in batches of LOAD_BATCH adapters (keyset pages: no query
        grows with the library, nor binds more parameters than a batch)."""
        with self.lock, sessions() as session:
            self.clear()
            self.seq = last_seq(session)  # read first: later changes are re-applied, reloading is idempotent
            after = 0
            while True:
                ids = list(
                    session.scalars(
                        select(AdapterRepo.id).where(AdapterRepo.id > after).order_by(AdapterRepo.id).limit(LOAD_BATCH)
                    )
                )
                if not ids:
                    break
                self._load(session, set(ids))
                after = ids[-1]
        release_freed_memory()  # the rows and stacks read on the way, and the arrays outgrown

    def refresh(self, sessions: sessionmaker[Session]) -> None:
        with self.lock, sessions() as session:
            seq, changed = changed_since(session, self.seq)
            for adapter_id in changed:
                self._remove(adapter_id)
            ordered = sorted(changed)
            for start in range(0, len(ordered), LOAD_BATCH):
                self._load(session, set(ordered[start : start + LOAD_BATCH]))
            self.seq = seq
        if len(changed) > 1:
            release_freed_memory()  # a catch-up of many changes reads as a rebuild does

    def _remove(self, adapter_id: int) -> None:
        entry = self.entries.pop(adapter_id, None)
        if entry is None:
            return
        del self.by_version[entry.version_id]
        for module, width in entry.modules:
            self.prototypes[(entry.base_model, module, width)].remove(entry.partition, entry.version_id)
        self.text.remove(entry.partition, entry.version_id)
        self.examples.remove(entry.partition, entry.version_id)

    def _load(self, session: Session, adapter_ids: set[int]) -> None:
        """Index the latest version of the given adapters (at most LOAD_BATCH of them)."""
        newest = (
            select(Version.adapter_id, func.max(Version.number).label("number"))
            .where(Version.adapter_id.in_(sorted(adapter_ids)))
            .group_by(Version.adapter_id)
            .subquery()
        )
        rows = session.execute(
            select(Version, AdapterRepo, Namespace.name)
            .join(newest, (Version.adapter_id == newest.c.adapter_id) & (Version.number == newest.c.number))
            .join(AdapterRepo, AdapterRepo.id == Version.adapter_id)
            .join(Namespace, Namespace.id == AdapterRepo.namespace_id)
        ).all()
        if not rows:
            return
        version_ids = [v.id for v, _, _ in rows]
        examples = {
            e.version_id: e.vector
            for e in session.scalars(
                select(Embedding).where(Embedding.version_id.in_(version_ids), Embedding.kind == "examples")
            )
        }
        batches: dict[tuple[int, int], tuple[PartitionedIndex, list[int], list[np.ndarray]]] = {}

        def stage(index: PartitionedIndex, entry: Entry, vector: bytes) -> None:
            _, ids, vectors = batches.setdefault((id(index), entry.partition), (index, [], []))
            ids.append(entry.version_id)
            vectors.append(from_bytes(vector))

        def flush() -> None:
            for (_, partition), (index, ids, vectors) in batches.items():
                index.add(partition, ids, np.stack(vectors))
            batches.clear()

        for version, adapter, ns_name in rows:
            entry = Entry(
                identity=VersionIdentity(f"{ns_name}/{adapter.name}", version.number, version.revision),
                version_id=version.id,
                adapter_id=adapter.id,
                namespace_id=adapter.namespace_id,
                namespace=ns_name,
                visibility=adapter.visibility,
                base_model=version.base_model,
                task=adapter.task,
                tags=frozenset(adapter.tags or ()),
                modules=frozenset(),  # filled in below, as the prototypes stream by
            )
            self.entries[adapter.id] = self.by_version[version.id] = entry
            if adapter.text_embedding is not None:
                stage(self.text, entry, adapter.text_embedding)
            if version.id in examples:
                stage(self.examples, entry, examples[version.id])
        flush()
        # The prototypes streamed in chunks, each indexed as it comes: a batch of Llama-7B-shaped adapters
        # holds 4.3 MiB of them each, which read at once (rows, then copies, then stacks) took several
        # times the index's own size at start-up. One pass: the entries' modules are gathered on the way.
        query = select(Prototype.version_id, Prototype.module, Prototype.in_features, Prototype.vector).where(
            Prototype.version_id.in_(version_ids)
        )
        if not self.choice.every:  # only the vectors of the modules indexed are read
            adapted: dict[int, list[str]] = {}
            for version_id, module in session.execute(
                select(Prototype.version_id, Prototype.module).where(Prototype.version_id.in_(version_ids))
            ):
                adapted.setdefault(version_id, []).append(module)
            chosen = sorted({m for ms in adapted.values() for m in ms if self.choice.chooses(m)})
            own = sorted(v for v, ms in adapted.items() if not any(self.choice.chooses(m) for m in ms))
            query = query.where(or_(Prototype.module.in_(chosen), Prototype.version_id.in_(own)))
        vectors = session.execute(query.execution_options(yield_per=PROTOTYPE_CHUNK))
        modules: dict[int, set[tuple[str, int]]] = {}
        for chunk in vectors.partitions():
            for version_id, module, width, vector in chunk:
                entry = self.by_version[version_id]
                stage(self.prototype_index((entry.base_model, module, width)), entry, vector)
                modules.setdefault(version_id, set()).add((module, width))
            flush()
        for version_id, found in modules.items():
            entry = replace(self.by_version[version_id], modules=self.module_set(found))
            self.entries[entry.adapter_id] = self.by_version[version_id] = entry

    # -- what a caller may search --

    def candidates(self, index: PartitionedIndex, principal: Principal, filters: Filters) -> list[Candidates]:
        """The partitions of `index` the caller may see, each with the ids that pass the filters."""
        out = []
        for part in index.readable(principal):
            if filters.empty:
                out.append(Candidates(part, None, len(part.ids)))
                continue
            allowed = [v for v in part.ids if filters.match(self.by_version[v])]
            if len(allowed) == len(part.ids):
                out.append(Candidates(part, None, len(allowed)))
            elif allowed:
                out.append(Candidates(part, np.asarray(allowed, dtype=np.int64), len(allowed)))
        return out

    def memory_bytes(self) -> int:
        """The indexes' bytes in memory (a large module's float32 prototypes are in files: file_bytes)."""
        return sum(i.memory_bytes() for i in [*self.prototypes.values(), self.text, self.examples])

    def file_bytes(self) -> int:
        """The float32 prototypes kept in files, mapped (row_store)."""
        return sum(i.file_bytes() for i in self.prototypes.values())
