"""One test suite, two blob stores: the local directory and an S3-compatible bucket (a real S3-protocol
server on loopback, moto's). Same contract on both (registry/storage/blobs.py)."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from quiver_hub.registry.errors import TooLarge
from quiver_hub.registry.storage.blobs import BlobStore
from quiver_hub.registry.storage.s3 import PART_BYTES, S3BlobStore
from tests.support.servers import S3


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield BlobStore(tmp_path / "blobs")
        return
    s3: S3 = request.getfixturevalue("s3")
    yield S3BlobStore(
        f"s3://{s3.bucket()}/some/prefix", tmp_path / "blobs", endpoint_url=s3.endpoint, region="us-east-1"
    )


def put(store: BlobStore, data: bytes) -> str:
    staged = store.stage(io.BytesIO(data))
    store.install(staged)
    return staged.sha256


def test_content_is_addressed_by_sha256_and_read_back_whole(store: BlobStore) -> None:
    data = os.urandom(100_000)
    sha = put(store, data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.exists(sha) and store.local_path(sha).read_bytes() == data
    assert {s for s, _ in store.stored()} == {sha}
    assert not any(store.tmp.iterdir())  # nothing left staged
    again = store.stage(io.BytesIO(data))
    store.install(again)  # the same content again: replaced by the identical bytes, not trusted
    assert store.local_path(sha).read_bytes() == data and {s for s, _ in store.stored()} == {sha}


def test_a_large_file_streams_in_parts(store: BlobStore, tmp_path: Path) -> None:
    big = tmp_path / "big"
    with big.open("wb") as f:
        for _ in range(PART_BYTES // (1 << 20) * 2 + 3):  # more than two parts
            f.write(os.urandom(1 << 20))
    with big.open("rb") as f:
        staged = store.stage(f)
    store.install(staged)
    if isinstance(store, S3BlobStore):
        store.clear_cache()  # read it back from the bucket, not from what the upload left here
        assert store.verify(staged.sha256)
    assert hashlib.sha256(store.local_path(staged.sha256).read_bytes()).hexdigest() == staged.sha256


def test_limits_discards_and_deletes(store: BlobStore) -> None:
    with pytest.raises(TooLarge):
        store.stage(io.BytesIO(b"x" * 100), limit=10)
    staged = store.stage(io.BytesIO(b"kept out"))
    store.discard([staged])
    assert not any(store.tmp.iterdir()) and not store.exists(staged.sha256)
    sha = put(store, b"gone soon")
    reused = store.reuse(sha, 9)
    assert reused.stored and reused.path.read_bytes() == b"gone soon"
    store.discard([reused])  # a reused blob is never discarded
    assert store.exists(sha)
    store.delete(sha)
    assert not store.exists(sha) and list(store.stored()) == []
    with pytest.raises(FileNotFoundError):
        store.local_path(sha)


def test_abandoned_uploads_and_presigned_downloads(store: BlobStore) -> None:
    sha = put(store, b"served elsewhere")
    url = store.presigned_url(sha, "adapter_model.safetensors", 60)
    if not isinstance(store, S3BlobStore):
        assert url is None and store.abandoned_uploads(0) == 0
        return
    got = httpx.get(url)
    assert got.status_code == 200 and got.content == b"served elsewhere"
    assert 'filename="adapter_model.safetensors"' in got.headers["content-disposition"]
    key = store.key("f" * 64)
    store.client.create_multipart_upload(Bucket=store.bucket, Key=key)  # a crash mid-upload
    store.client.upload_part(
        Bucket=store.bucket,
        Key=key,
        PartNumber=1,
        UploadId=store.client.list_multipart_uploads(Bucket=store.bucket)["Uploads"][0]["UploadId"],
        Body=b"part",
    )
    # (moto reports every upload as begun in 2010, so the grace for young uploads shows only on real S3)
    assert store.abandoned_uploads(0) == 1
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


def test_the_read_cache_stays_bounded(s3: S3, tmp_path: Path) -> None:
    store = S3BlobStore(f"s3://{s3.bucket()}", tmp_path / "b", endpoint_url=s3.endpoint, cache_bytes=250_000)
    shas = [put(store, os.urandom(100_000)) for _ in range(5)]
    assert sum(p.stat().st_size for p in store.cache.iterdir()) <= 250_000
    for sha in shas:  # every one still readable: fetched again when it was evicted
        assert hashlib.sha256(store.local_path(sha).read_bytes()).hexdigest() == sha
