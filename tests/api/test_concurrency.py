"""Concurrent publishes to one adapter all succeed, with distinct consecutive version numbers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.adapters import upload_parts, write_adapter
from tests.support.servers import LiveServer


def test_concurrent_publishes_get_distinct_versions(server: LiveServer, tmp_path: Path) -> None:
    token = server.token("alice")
    folders = [write_adapter(tmp_path / f"a{i}", seed=i) for i in range(8)]

    def publish(folder: Path) -> tuple[int, dict]:
        with server.client(token) as c:
            r = c.post("/v1/adapters/alice/busy", files=upload_parts(folder))
            return r.status_code, r.json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(publish, folders))
    assert [status for status, _ in results] == [201] * 8, results
    assert sorted(body["version"] for _, body in results) == list(range(1, 9))
    with server.client() as c:
        versions = c.get("/v1/adapters/alice/busy/versions").json()["versions"]
        assert [v["version"] for v in versions] == list(range(1, 9))
        assert len({v["revision"] for v in versions}) == 8
