"""Content-addressed blob stores, keyed by sha256: a local directory (the embedded default) or an
S3-compatible object store (registry/storage/s3.py), with the same guarantees on both.

Every write streams into a local `tmp/` while hashing and fsyncs (`stage`); `install` then puts the bytes
at their content address (a rename here, an upload there) inside the transaction that makes a version
visible, which commits last (registry.catalogue.publishing), so a crash leaves at most unreferenced blobs, which
`quiver gc` removes. Reads that need a file (validation, cards, merges) go through `local_path`, which an
object store fills from a bounded local cache; downloads may instead be redirected to the store itself
(`presigned_url`).

Layout: `objects/ab/cd/<sha256>` for content (under the root, or the bucket's prefix), `tmp/` for writes in
flight (always local).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from quiver_hub.registry.errors import TooLarge

CHUNK = 1024 * 1024


@dataclass
class StagedFile:
    """Bytes written to the store's tmp/ and hashed, not yet installed; or, with `stored`, a blob already
    in the store that a new version reuses (never moved or discarded)."""

    path: Path
    sha256: str
    size: int
    stored: bool = False


def object_key(sha256: str) -> str:
    return f"objects/{sha256[:2]}/{sha256[2:4]}/{sha256}"


class BlobStore:
    """The local directory store; the base of every store (staging is always local)."""

    name = "local"

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    # -- writing (staging is local for every store) --

    def stage(self, source: BinaryIO, limit: int | None = None) -> StagedFile:
        """Copy a stream into tmp/ while hashing it, then fsync. Raises TooLarge past `limit` bytes."""
        digest = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="stage-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(CHUNK):
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise TooLarge(f"upload is larger than the {limit}-byte limit")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return StagedFile(Path(name), digest.hexdigest(), size)

    def reuse(self, sha256: str, size: int) -> StagedFile:
        """An existing blob, to be part of a new version as it is (readable at .path while it exists)."""
        return StagedFile(self.local_path(sha256), sha256, size, stored=True)

    def discard(self, staged: Iterable[StagedFile]) -> None:
        for s in staged:
            if not s.stored:
                s.path.unlink(missing_ok=True)

    def stale_temp_files(self, older_than_s: float) -> Iterator[Path]:
        cutoff = time.time() - older_than_s
        for p in self.tmp.iterdir():
            if p.is_file() and p.stat().st_mtime < cutoff:
                yield p

    def install(self, staged: StagedFile) -> None:
        """Put a staged file at its content address: an atomic rename, the directory fsynced. Content
        already there is replaced by the identical bytes: never trusted to outlive a purge in flight."""
        if staged.stored:
            return
        target = self.path(staged.sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, target)
        _fsync_dir(target.parent)

    # -- reading --

    def path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256[2:4] / sha256

    def local_path(self, sha256: str) -> Path:
        """A local file holding the blob's bytes (here, the blob itself). FileNotFoundError when it is gone."""
        path = self.path(sha256)
        if not path.is_file():
            raise FileNotFoundError(f"blob {sha256} is not in the store")
        return path

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def presigned_url(self, sha256: str, filename: str, expires_s: int) -> str | None:
        """A URL that serves the blob without the hub, where the store can make one (not here)."""
        return None

    # -- removing, and what gc walks --

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def stored(self) -> Iterator[tuple[str, float]]:
        """(sha256, age in seconds) of every blob with content in the store."""
        now = time.time()
        for p in self.objects.glob("*/*/*"):
            if p.is_file() and len(p.name) == 64:
                try:
                    yield p.name, now - p.stat().st_mtime
                except FileNotFoundError:
                    continue

    def abandoned_uploads(self, older_than_s: float) -> int:
        """Remove uploads a crash left half done (an object store's multipart parts); how many."""
        return 0

    def ready(self) -> str:
        """ "ok", or why the store cannot take writes."""
        return "ok" if os.access(self.tmp, os.W_OK) else "not writable"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
