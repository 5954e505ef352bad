"""Transfers that behave like huggingface_hub's, against a real hub: a download the server cuts off is
tried again and resumed, a full model is refused before a byte is sent, and an unpinned name pulled
once resolves offline from the last answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from quiver_hub import Hub
from tests.support.adapters import write_adapter
from tests.support.servers import LiveServer, free_port

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class FlakyProxy:
    """A TCP proxy in front of the hub that cuts the first `cuts` downloads of a weights file after a few
    KB of the answer, as a dropped connection or a restarting load balancer would."""

    def __init__(self, upstream_port: int, cuts: int = 2, after: int = 4096) -> None:
        self.upstream_port, self.cuts, self.after = upstream_port, cuts, after
        self.port = free_port()
        self.cut = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        head = await reader.readuntil(b"\r\n\r\n")  # one request a connection: the hub closes it after
        head = head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        cutting = b"adapter_model.safetensors" in head.split(b"\r\n", 1)[0] and self.cut < self.cuts
        if cutting:
            self.cut += 1
        up_writer.write(head)
        await up_writer.drain()

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, limit: int | None) -> None:
            sent = 0
            try:
                while data := await src.read(1024):
                    if limit is not None and sent + len(data) > limit:
                        dst.write(data[: limit - sent])
                        break
                    dst.write(data)
                    sent += len(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, None), pump(up_reader, writer, self.after if cutting else None))

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(asyncio.start_server(self.handle, "127.0.0.1", self.port), self.loop).result()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def published(server: LiveServer, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    token = server.token("alice")
    folder = write_adapter(tmp_path / "big", hidden=512, layers=4)  # a weights file of ~130 KB
    with Hub(server.url, token, cache_dir=tmp_path / "publisher") as hub:
        hub.push(folder, "alice/big")
    yield token, folder


def test_a_download_cut_off_by_the_server_is_tried_again_and_completes(
    server: LiveServer, published: tuple[str, Path], tmp_path: Path
) -> None:
    token, folder = published
    port = int(server.url.rsplit(":", 1)[1])
    with (
        FlakyProxy(port, cuts=2) as proxy,
        Hub(f"http://127.0.0.1:{proxy.port}", token, cache_dir=tmp_path / "c") as hub,
    ):
        pulled = hub.pull("alice/big")
        assert proxy.cut == 2  # two downloads were cut; the third, resumed, finished
    weights = (pulled / "adapter_model.safetensors").read_bytes()
    assert weights == (folder / "adapter_model.safetensors").read_bytes()


def test_an_unpinned_name_pulled_once_resolves_offline(
    server: LiveServer, published: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, folder = published
    with Hub(server.url, token, cache_dir=tmp_path / "c") as hub:
        online = hub.pull("alice/big")
    monkeypatch.setenv("QUIVER_OFFLINE", "1")
    with Hub(server.url, token, cache_dir=tmp_path / "c") as hub:
        assert hub.pull("alice/big") == online
        with pytest.raises(Exception, match="not in the cache"):
            hub.pull("alice/never-pulled")
    monkeypatch.delenv("QUIVER_OFFLINE")
    with Hub(f"http://127.0.0.1:{free_port()}", token, cache_dir=tmp_path / "c") as hub, pytest.warns(RuntimeWarning):
        assert hub.pull("alice/big") == online  # a hub that cannot be reached: the last answer, said so


def test_a_full_model_is_refused_before_a_byte_is_sent(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"lm_head.weight": torch.zeros(64, 64)}, str(model / "model.safetensors"))
    beside = write_adapter(tmp_path / "beside")
    save_file({"lm_head.weight": torch.zeros(64, 64)}, str(beside / "model-00001-of-00002.safetensors"))
    with server.client(token) as c:
        before = c.get("/v1/audit").json()
    with Hub(server.url, token, cache_dir=tmp_path / "c") as hub:
        with pytest.raises(ValueError, match="is a full model checkpoint"):
            hub.push(model, "alice/full")
        with pytest.raises(ValueError, match="holds a full model's weights beside the adapter"):
            hub.push(beside, "alice/beside")
    with server.client(token) as c:
        assert c.get("/v1/audit").json() == before  # the hub saw no publish
        assert c.get("/v1/adapters/alice/full").status_code == 404


def test_a_push_reports_its_bytes_as_they_go(server: LiveServer, tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "a", hidden=256, layers=4)
    total = sum(p.stat().st_size for p in folder.iterdir())
    seen: list[tuple[int, int]] = []
    with Hub(server.url, server.token("alice"), cache_dir=tmp_path / "c") as hub:
        hub.push(folder, "alice/progress", progress=lambda sent, of: seen.append((sent, of)))
    assert seen and seen[-1] == (total, total)
    assert [s for s, _ in seen] == sorted(s for s, _ in seen) and len(seen) > 2


def test_a_damaged_partial_download_is_fetched_again_whole(
    server: LiveServer, published: tuple[str, Path], tmp_path: Path
) -> None:
    token, folder = published
    weights = (folder / "adapter_model.safetensors").read_bytes()
    sha = hashlib.sha256(weights).hexdigest()
    blobs = tmp_path / "c" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.incomplete").write_bytes(b"\0" * (len(weights) // 2))  # a partial file that is wrong
    with Hub(server.url, token, cache_dir=tmp_path / "c") as hub:
        pulled = hub.pull("alice/big")
    assert (pulled / "adapter_model.safetensors").read_bytes() == weights
