"""Blobs in an S3-compatible object store (AWS S3, MinIO, ...), so hub processes on different machines
share one registry: QUIVER_BLOB_URL=s3://bucket/prefix (registry/storage/blobs.py has the contract).

- Writes are staged locally and hashed (as for the local store), then uploaded with boto3's managed
  transfer, which streams large files in parts (multipart upload) and never holds a file in memory. The
  upload finishes before the transaction that makes the version visible commits.
- An upload that a crash cut short leaves parts, which `quiver gc` aborts once older than its grace.
- Reads that need a file go through a local cache under QUIVER_HOME (bounded; least recently used first
  out), verified against the sha256 when filled.
- Downloads can skip the hub: a short-lived presigned GET URL of the object itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

from quiver_hub.registry.storage.blobs import CHUNK, BlobStore, StagedFile, object_key

PART_BYTES = 16 * 1024 * 1024


class S3BlobStore(BlobStore):
    name = "s3"

    def __init__(
        self,
        url: str,
        local_root: Path | str,
        endpoint_url: str | None = None,
        region: str | None = None,
        public_endpoint_url: str | None = None,
        cache_bytes: int = 10 * 1024**3,
    ):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"QUIVER_BLOB_URL must look like s3://bucket/prefix, got {url!r}")
        self.url, self.bucket, self.prefix = url, parsed.netloc, parsed.path.strip("/")
        super().__init__(local_root)  # tmp/ for staging
        self.cache = Path(local_root) / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.cache_bytes = cache_bytes
        config = Config(region_name=region, signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"})
        self.client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
        # Presigned URLs name the host clients reach, which may not be the one the hub reaches (compose).
        self.signer = (
            boto3.client("s3", endpoint_url=public_endpoint_url, config=config) if public_endpoint_url else self.client
        )
        self.transfer = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES)

    def key(self, sha256: str) -> str:
        return f"{self.prefix}/{object_key(sha256)}" if self.prefix else object_key(sha256)

    # -- writing --

    def install(self, staged: StagedFile) -> None:
        """Upload a staged file to its key (in parts when large), check the store has all of it, and drop
        the staged copy. Content already there is uploaded again: never trusted to outlive a purge."""
        if staged.stored:
            return
        self.put_file(staged.sha256, staged.path, staged.size)
        self._cache_staged(staged)

    def put_file(self, sha256: str, path: Path, size: int) -> None:
        """Upload a local file as the blob `sha256` (in parts when large) and check the store has all of it."""
        self.client.upload_file(
            str(path), self.bucket, self.key(sha256), ExtraArgs={"Metadata": {"sha256": sha256}}, Config=self.transfer
        )
        head = self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        if head["ContentLength"] != size:
            raise OSError(f"the object store holds {head['ContentLength']} bytes of {sha256}, not {size}")

    def verify(self, sha256: str) -> bool:
        """Read the object back whole and check its sha256."""
        digest = hashlib.sha256()
        for chunk in self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"].iter_chunks(CHUNK):
            digest.update(chunk)
        return digest.hexdigest() == sha256

    def _cache_staged(self, staged: StagedFile) -> None:
        """Keep what was just uploaded in the read cache (it is read again soon: analysis, downloads)."""
        target = self.cache / staged.sha256
        try:
            os.replace(staged.path, target)
        except OSError:
            staged.path.unlink(missing_ok=True)
            return
        self._evict()

    # -- reading --

    def path(self, sha256: str) -> Path:  # the cache file (filled by local_path)
        return self.cache / sha256

    def local_path(self, sha256: str) -> Path:
        """The blob, from the local cache; fetched and verified when missing. FileNotFoundError if the
        store does not have it."""
        target = self.cache / sha256
        if target.is_file():
            os.utime(target)  # recently used
            return target
        from botocore.exceptions import ClientError

        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="fetch-")
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                body = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"]
                for chunk in body.iter_chunks(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != sha256:
                raise OSError(f"the object store's copy of {sha256} does not match its sha256")
            os.replace(name, target)
        except ClientError as e:
            Path(name).unlink(missing_ok=True)
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"blob {sha256} is not in the store") from None
            raise
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        self._evict()
        return target

    def _evict(self) -> None:
        files = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.cache.iterdir() if p.is_file()]
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files):
            if total <= self.cache_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size

    def exists(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def presigned_url(self, sha256: str, filename: str, expires_s: int) -> str | None:
        return self.signer.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.key(sha256),
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
            },
            ExpiresIn=expires_s,
        )

    # -- removing, and what gc walks --

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256))
        (self.cache / sha256).unlink(missing_ok=True)

    def stored(self) -> Iterator[tuple[str, float]]:
        now = datetime.now(UTC)
        prefix = f"{self.prefix}/objects/" if self.prefix else "objects/"
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                sha = item["Key"].rsplit("/", 1)[-1]
                if len(sha) == 64:
                    yield sha, (now - item["LastModified"]).total_seconds()

    def abandoned_uploads(self, older_than_s: float) -> int:
        """Abort the multipart uploads under the prefix begun more than `older_than_s` ago."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        aborted = 0
        prefix = f"{self.prefix}/" if self.prefix else ""
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < cutoff:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted

    def ready(self) -> str:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as e:  # noqa: BLE001 - reported, not raised
            return f"bucket {self.bucket} unavailable: {type(e).__name__}"
        return super().ready()

    def clear_cache(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)
        self.cache.mkdir(parents=True, exist_ok=True)
