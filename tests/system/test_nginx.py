"""docs/nginx.conf in front of a hub on the local store (QUIVER_ACCEL_REDIRECT): the hub decides who may
read what and answers with the headers; a real nginx sends the bytes, Range included."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from quiver_hub.hub.settings import Settings
from tests.support.adapters import upload_parts, write_adapter
from tests.support.nginx import nginx
from tests.support.servers import LiveServer
from tests.system.test_s3_replicas import pull_and_hf_download

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture
def database_url(tmp_path: Path) -> str:  # the proxy does not care which database: SQLite only
    return f"sqlite:///{tmp_path / 'quiver.db'}"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url=database_url, accel_redirect="/_quiver_blobs/")


@pytest.fixture
def proxied(server: LiveServer, tmp_path: Path) -> Iterator[str]:
    with nginx(server.url, server.settings.home, tmp_path / "nginx") as url:
        yield url


def test_nginx_sends_the_files_the_hub_allows(server: LiveServer, proxied: str, tmp_path: Path) -> None:
    token = server.token("alice")
    auth = {"Authorization": f"Bearer {token}"}
    folder = write_adapter(tmp_path / "fr", extra_files={"README.md": b"# Translates into French.\n"})
    published = httpx.post(f"{proxied}/v1/adapters/alice/fr", headers=auth, files=upload_parts(folder))
    assert published.status_code == 201, published.text
    data = (folder / WEIGHTS).read_bytes()
    etag = f'"{hashlib.sha256(data).hexdigest()}"'

    # through the hub alone, the hub hands the file over: no body, the internal path
    direct = httpx.get(f"{server.url}/v1/adapters/alice/fr/versions/1/files/{WEIGHTS}")
    assert direct.headers["x-accel-redirect"].startswith("/_quiver_blobs/") and direct.content == b""

    url = f"{proxied}/v1/adapters/alice/fr/versions/1/files/{WEIGHTS}"
    whole = httpx.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["etag"] == etag and whole.headers["content-length"] == str(len(data))
    assert whole.headers["x-quiver-revision"] == published.json()["revision"]
    assert whole.headers["content-disposition"] == f'attachment; filename="{WEIGHTS}"'
    assert "x-accel-redirect" not in whole.headers
    ranged = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == data[100:200]
    assert ranged.headers["content-range"] == f"bytes 100-199/{len(data)}"
    head = httpx.head(f"{proxied}/alice/fr/resolve/main/{WEIGHTS}")
    assert head.status_code == 200 and head.headers["x-linked-etag"] == etag
    assert head.headers["x-repo-commit"] == published.json()["revision"]

    # the internal location is not reachable from outside, so nobody skips the hub's checks
    path = direct.headers["x-accel-redirect"]
    assert httpx.get(f"{proxied}{path}").status_code == 404
    httpx.patch(f"{proxied}/v1/adapters/alice/fr", headers=auth, json={"visibility": "private"}).raise_for_status()
    assert httpx.get(url).status_code == 404  # private now: the hub says no before nginx reads a byte
    assert httpx.get(url, headers=auth).content == data

    # huggingface_hub and Hub.pull through the proxy get the bytes that were published
    pulled = pull_and_hf_download(proxied, token, tmp_path)
    for name, hex_data in pulled.items():
        assert bytes.fromhex(hex_data) == (folder / name).read_bytes(), name
