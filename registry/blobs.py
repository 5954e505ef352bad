"""A content-addressed blob store on the local file system, keyed by sha256.

Layout under the root: `objects/ab/cd/<sha256>` for content, `tmp/` for writes in flight.
A write streams into tmp/ while hashing, fsyncs, then renames into place, so a blob path
either holds its complete content or does not exist. The database row that makes a version
visible is committed after the blobs are in place (registry.writes).
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
    """Bytes written to the store's tmp/ and hashed, not yet installed under objects/; or, with
    `stored`, a blob already under objects/ that a new version reuses (never moved or discarded)."""

    path: Path
    sha256: str
    size: int
    stored: bool = False


class BlobStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

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
        """An existing blob, to be part of a new version as it is."""
        return StagedFile(self.path(sha256), sha256, size, stored=True)

    def install(self, staged: StagedFile) -> Path:
        """Move a staged file to its content address (atomic rename), fsyncing the directory. Content
        already there is replaced by the identical bytes: never trusted to outlive a purge in flight."""
        target = self.path(staged.sha256)
        if staged.stored:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, target)
        _fsync_dir(target.parent)
        return target

    def discard(self, staged: Iterable[StagedFile]) -> None:
        for s in staged:
            if not s.stored:
                s.path.unlink(missing_ok=True)

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def stored(self) -> Iterator[str]:
        """Every sha256 that has content under objects/."""
        for p in self.objects.glob("*/*/*"):
            if p.is_file() and len(p.name) == 64:
                yield p.name

    def stale_temp_files(self, older_than_s: float) -> Iterator[Path]:
        cutoff = time.time() - older_than_s
        for p in self.tmp.iterdir():
            if p.is_file() and p.stat().st_mtime < cutoff:
                yield p


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
