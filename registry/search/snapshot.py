"""The search indexes on disk: saved with the change-sequence number they reflect, loaded at start-up and
caught up from that number, so that a hub does not re-read every adapter each time it starts.

A snapshot is two files in one folder (QUIVER_HOME/indexes): `indexes.npz`, every partition's ids and
vectors and the entries as JSON (numpy's own format, read without pickle), and `manifest.json`, which
names what the snapshot reflects: its format, the change it was taken at (sequence number, adapter,
time) and an HMAC-SHA256, under the hub's secret key, of `indexes.npz` and of the manifest itself. The
indexes are derived state, so a snapshot that fails any check is rebuilt from the database, never
trusted: unreadable or truncated, a MAC that does not match (corrupt, half-written, or written by
someone without the key: a plain checksum anyone can recompute), another format, or a change sequence
that does not hold its change (another database, or one restored from an older backup). Writers replace
both files atomically under a file lock. Search and route results are checked against the database's
visibility as well (routing.visible_now), so not even a snapshot signed with a stolen key can show a
private adapter.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from filelock import FileLock
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.catalogue.reads import VersionIdentity
from quiver_hub.registry.models import Change
from quiver_hub.registry.search.indexes import Entry, IndexSet
from quiver_hub.registry.search.row_store import Spill

FORMAT = 2  # 2: an HMAC under the hub's key instead of a bare sha256
DATA = "indexes.npz"
MANIFEST = "manifest.json"
log = logging.getLogger("quiver.indexes")


@dataclass(frozen=True)
class Opened:
    """How the indexes were made at start-up: from a snapshot caught up by `caught_up` changes, or
    rebuilt from the database (`why`: no snapshot, or the check it failed)."""

    from_snapshot: bool
    snapshot_seq: int
    caught_up: int
    why: str = ""


class Refused(Exception):
    """A snapshot that must not be used; the message says which check it failed."""


def open_indexes(
    sessions: sessionmaker[Session], folder: Path, key: str, route_modules: str = "", spill: Spill | None = None
) -> tuple[IndexSet, Opened]:
    """The indexes of the database (routing on the modules `route_modules` matches, their large modules'
    rows in files as `spill` says: IndexSet): the snapshot in `folder` caught up from its change sequence
    number when it passes every check (its MAC under `key` among them), else rebuilt from the database."""
    indexes = IndexSet(route_modules, spill)
    try:
        seq = load(indexes, folder, sessions, key)
    except Refused as refused:
        log.warning("search indexes: rebuilding from the database (%s)", refused)
        indexes.rebuild(sessions)
        return indexes, Opened(False, 0, 0, str(refused))
    before = indexes.seq
    indexes.refresh(sessions)
    return indexes, Opened(True, seq, indexes.seq - before)


def save(indexes: IndexSet, folder: Path, sessions: sessionmaker[Session], key: str) -> int:
    """Write a snapshot of `indexes` into `folder`, replacing the one there; returns its sequence number."""
    with indexes.lock:
        seq, meta, arrays = _collect(indexes)
    with sessions() as session:  # change rows never change: reading it after the lock is the same
        meta["manifest"]["change"] = _change_at(session, seq)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / ".lock"):
        with _replacing(folder / DATA) as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        manifest = meta["manifest"] | {"mac": _mac(key, folder / DATA, meta["manifest"])}
        with _replacing(folder / MANIFEST) as f:
            f.write(json.dumps(manifest).encode())
    return seq


def _mac(key: str, data: Path, manifest: dict) -> str:
    """HMAC-SHA256 under the hub's secret key of the data file's sha256 and the manifest (but its MAC)."""
    digest = hashlib.sha256()
    with open(data, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    described = json.dumps({k: v for k, v in manifest.items() if k != "mac"}, sort_keys=True).encode()
    return hmac.new(key.encode(), digest.digest() + described, hashlib.sha256).hexdigest()


def snapshot_seq(folder: Path) -> int | None:
    """The change sequence number the snapshot in `folder` claims to reflect (None: none readable)."""
    try:
        return json.loads((folder / MANIFEST).read_text())["seq"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load(indexes: IndexSet, folder: Path, sessions: sessionmaker[Session], key: str) -> int:
    """Fill `indexes` from the snapshot in `folder` (not yet caught up); returns its sequence number.
    Raises Refused when there is none or it fails a check."""
    if not (folder / MANIFEST).is_file():
        raise Refused("no snapshot yet")
    with FileLock(folder / ".lock"):  # no writer replaces the files while they are checked and read
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise Refused(f"snapshot format {manifest.get('format') if isinstance(manifest, dict) else '?'}")
            if manifest.get("route_modules", "") != indexes.route_modules:
                raise Refused(
                    f"snapshot of the modules {manifest.get('route_modules')!r}, not {indexes.route_modules!r}"
                )
            if not hmac.compare_digest(_mac(key, folder / DATA, manifest), str(manifest.get("mac"))):
                raise Refused(f"{DATA} and {MANIFEST} do not match their MAC (corrupt, half-written or not this hub's)")
            with sessions() as session:
                if _change_at(session, manifest["seq"]) != manifest["change"]:
                    raise Refused(f"the database does not hold change {manifest['seq']} as the snapshot saw it")
            with np.load(folder / DATA, allow_pickle=False) as npz:
                meta = json.loads(npz["meta"].tobytes())
                _restore(indexes, meta, npz)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise Refused(f"unreadable snapshot: {e}") from e
    return indexes.seq


def _change_at(session: Session, seq: int) -> list | None:
    """What identifies change `seq`: its adapter and time (None for seq 0: the empty sequence)."""
    if seq == 0:
        return None
    row = session.execute(select(Change.adapter_id, Change.created_at).where(Change.seq == seq)).first()
    return [row[0], row[1].isoformat()] if row else ["missing"]


def _collect(indexes: IndexSet) -> tuple[int, dict, dict[str, np.ndarray]]:
    parts: list[dict] = []
    arrays: dict[str, np.ndarray] = {}
    named = [("prototypes", list(key), index) for key, index in indexes.prototypes.items()]
    named += [("text", None, indexes.text), ("examples", None, indexes.examples)]
    for kind, key, index in named:
        for partition, flat in index.parts.items():
            n = len(parts)
            arrays[f"ids{n}"], arrays[f"vec{n}"] = flat.contents()
            parts.append({"kind": kind, "key": key, "dim": index.dim, "partition": partition})
    entries = [_entry_json(e) for e in indexes.entries.values()]
    manifest = {"format": FORMAT, "seq": indexes.seq, "adapters": len(entries), "route_modules": indexes.route_modules}
    return indexes.seq, {"manifest": manifest, "entries": entries, "parts": parts}, arrays


def _entry_json(e: Entry) -> dict:
    return {
        "identity": [e.identity.id, e.identity.version, e.identity.revision],
        "version_id": e.version_id,
        "adapter_id": e.adapter_id,
        "namespace_id": e.namespace_id,
        "namespace": e.namespace,
        "visibility": e.visibility,
        "base_model": e.base_model,
        "task": e.task,
        "tags": sorted(e.tags),
        "modules": sorted([m, w] for m, w in e.modules),
    }


def _restore(indexes: IndexSet, meta: dict, npz: np.lib.npyio.NpzFile) -> None:
    indexes.clear()
    for raw in meta["entries"]:
        entry = Entry(
            identity=VersionIdentity(*raw["identity"]),
            version_id=raw["version_id"],
            adapter_id=raw["adapter_id"],
            namespace_id=raw["namespace_id"],
            namespace=raw["namespace"],
            visibility=raw["visibility"],
            base_model=raw["base_model"],
            task=raw["task"],
            tags=frozenset(raw["tags"]),
            modules=indexes.module_set((m, w) for m, w in raw["modules"]),
        )
        indexes.entries[entry.adapter_id] = indexes.by_version[entry.version_id] = entry
    for n, part in enumerate(meta["parts"]):
        if part["kind"] == "prototypes":
            index = indexes.prototype_index(tuple(part["key"]))
        else:
            index = indexes.text if part["kind"] == "text" else indexes.examples
        ids, vectors = npz[f"ids{n}"], npz[f"vec{n}"]
        if vectors.shape != (len(ids), index.dim) or vectors.dtype != np.float32:
            raise ValueError(f"partition {n}: vectors of shape {vectors.shape}, expected ({len(ids)}, {index.dim})")
        index.parts[part["partition"]] = index.make(ids, vectors)
    indexes.seq = meta["manifest"]["seq"]


@contextmanager
def _replacing(path: Path) -> Iterator[BinaryIO]:
    """A file that replaces `path` atomically once written: a reader sees the old one or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            # read again only at the next start: its pages leave the page cache to the indexes' rows
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
