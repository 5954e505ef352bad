"""The local cache of pulled adapters (QUIVER_CACHE, default ~/.cache/quiver), in the spirit of the
Hugging Face cache:

    blobs/<sha256>                       file contents, verified against their sha256
    adapters/<ns>/<name>/<revision>/     one folder per version, its files linking to blobs/
    adapters/<ns>/<name>/numbers/<n>     the revision of version n (versions are immutable)
    adapters/<ns>/<name>/refs/latest     what the hub last said the unpinned name means (for offline use)
    reference/<fingerprint>.safetensors  a model's reference means (quiver_hub.local.capture)

`quiver cache ls | verify | prune` read and tend it (`versions`, `verify`, `prune` here). Quiver keeps
its own layout rather than huggingface_hub's because a pull is addressed by the hub's sha256 of each file
and verified against it, and one blob serves every version and adapter that holds the same bytes;
adapters downloaded through the Hugging Face protocol (snapshot_download, PEFT) land in the HF cache as
usual, where `hf cache ls/verify` see them (the hub's tree gives what those tools check).

Downloads go to blobs/<sha256>.incomplete and resume from where they stopped; a lock per blob (filelock,
as huggingface_hub uses: it works on every OS) makes several processes pulling at once safe; a version
folder appears (atomic rename) only when complete. Where symbolic links cannot be made (Windows without
developer mode), the folder holds copies.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from quiver_hub.paths import default_cache_dir

CHUNK = 1024 * 1024


class Cache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_cache_dir()
        self.blobs = self.root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)

    def version_dir(self, repo: str, revision: str) -> Path:
        return self.root / "adapters" / repo / revision

    def remember_latest(self, repo: str, revision: str) -> None:
        """What the hub last said `repo` (unpinned) means, for offline use (as huggingface_hub keeps
        refs/main)."""
        ref = self.root / "adapters" / repo / "refs" / "latest"
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f".latest.{os.getpid()}")
        tmp.write_text(revision)
        os.replace(tmp, ref)

    def cached_revision(self, repo: str, rev: str | None) -> str | None:
        """The revision id of a pinned `rev` (a revision id or a version number) if it is cached; with
        `rev` None, the one the hub last answered for the unpinned name."""
        if rev is None or rev == "latest":
            ref = self.root / "adapters" / repo / "refs" / "latest"
            revision = ref.read_text().strip() if ref.is_file() else None
            return revision if revision and self.version_dir(repo, revision).is_dir() else None
        if len(rev) == 40 and self.version_dir(repo, rev).is_dir():
            return rev
        number = self.root / "adapters" / repo / "numbers" / rev
        if rev.isascii() and rev.isdigit() and number.is_file():
            revision = number.read_text().strip()
            return revision if self.version_dir(repo, revision).is_dir() else None
        return None

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        locks = self.root / "locks"
        locks.mkdir(exist_ok=True)
        with FileLock(locks / f"{name}.lock"):
            yield

    def blob(self, sha256: str, size: int, fetch: Callable[[int], Iterator[bytes]]) -> Path:
        """The verified blob, downloading what is missing with fetch(start) (resumed from a partial file)."""
        target = self.blobs / sha256
        with self._lock(sha256):
            if target.is_file():
                return target
            partial = self.blobs / f"{sha256}.incomplete"
            start = partial.stat().st_size if partial.is_file() else 0
            if start > size:
                partial.unlink()
                start = 0
            for resumed in (start > 0, False):  # a bad resumed file (stale, damaged): once more from byte 0
                with open(partial, "ab") as out:
                    for chunk in fetch(start) if start < size else ():
                        out.write(chunk)
                digest = hashlib.sha256()
                with open(partial, "rb") as f:
                    while chunk := f.read(CHUNK):
                        digest.update(chunk)
                if digest.hexdigest() == sha256:
                    os.replace(partial, target)
                    return target
                partial.unlink()
                start = 0
                if not resumed:
                    break
            raise OSError(f"the hub sent bytes that do not match their sha256 {sha256[:12]}...; try again later")

    def add_version(self, repo: str, number: int, revision: str, files: dict[str, Path]) -> Path:
        """Make the version folder (files link to their blobs) appear at once, complete."""
        final = self.version_dir(repo, revision)
        with self._lock(revision):
            if not final.is_dir():
                final.parent.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
                for path, blob in files.items():
                    link = staging / path
                    link.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.symlink(os.path.relpath(blob, link.parent), link)
                    except OSError:  # no symlinks here (Windows without developer mode): a copy
                        shutil.copyfile(blob, link)
                try:
                    os.rename(staging, final)
                except OSError:  # another process made it first
                    shutil.rmtree(staging, ignore_errors=True)
            numbers = final.parent / "numbers"
            numbers.mkdir(exist_ok=True)
            (numbers / str(number)).write_text(revision)
        return final


@dataclass(frozen=True)
class CachedVersion:
    repo: str
    revision: str
    number: int | None
    files: int
    size: int  # bytes of the blobs its files name


def versions(cache: Cache) -> list[CachedVersion]:
    """Every complete version in the cache, by repo then number."""
    out = []
    adapters = cache.root / "adapters"
    for folder in sorted(adapters.glob("*/*/*")) if adapters.is_dir() else []:
        if len(folder.name) != 40 or not folder.is_dir():
            continue
        repo = f"{folder.parent.parent.name}/{folder.parent.name}"
        numbers = folder.parent / "numbers"
        names = {n.read_text().strip(): int(n.name) for n in numbers.iterdir()} if numbers.is_dir() else {}
        number = names.get(folder.name)
        files = [f for f in folder.rglob("*") if f.is_file() or f.is_symlink()]
        size = sum(f.stat().st_size for f in files if f.exists())
        out.append(CachedVersion(repo, folder.name, number, len(files), size))
    return sorted(out, key=lambda v: (v.repo, v.number or 0))


def verify(cache: Cache) -> tuple[int, list[str]]:
    """Hash every blob again: (how many were checked, the ones whose bytes no longer match their name,
    which are removed so that the next pull downloads them again)."""
    bad, checked = [], 0
    for blob in sorted(cache.blobs.iterdir()):
        if len(blob.name) != 64:
            continue
        checked += 1
        digest = hashlib.sha256()
        with open(blob, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != blob.name:
            bad.append(blob.name)
            blob.unlink()
    return checked, bad


def prune(cache: Cache, repo: str | None = None) -> int:
    """Remove `repo`'s versions (all of them), then every blob no version names and every unfinished
    download; the bytes freed."""
    freed = 0
    if repo is not None:
        folder = cache.root / "adapters" / repo
        if folder.is_dir():
            shutil.rmtree(folder)
    named = set()
    adapters = cache.root / "adapters"
    for link in adapters.rglob("*") if adapters.is_dir() else []:
        if link.is_symlink():
            named.add(Path(os.readlink(link)).name)
        elif link.is_file() and link.parent.name not in ("numbers", "refs"):
            named.add(hashlib.sha256(link.read_bytes()).hexdigest())  # a copy (no symlinks here)
    for blob in cache.blobs.iterdir():
        if blob.name.endswith(".incomplete") or (len(blob.name) == 64 and blob.name not in named):
            freed += blob.stat().st_size
            blob.unlink()
    return freed
