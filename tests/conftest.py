"""The fixtures (the helpers behind them are tests/support/, which benchmarks import too): real databases (a
SQLite file; a fresh schema in the real Postgres), a real uvicorn server on a free port, and real adapters.

Postgres: QUIVER_TEST_DATABASE_URL names it (CI sets it). When it is set, an unreachable server is an error,
never a skip; in CI (CI=true) it must be set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from quiver_hub.hub.app import create_app
from quiver_hub.hub.server import server_config
from quiver_hub.hub.services import Services
from quiver_hub.hub.settings import Settings
from tests.support.servers import AWS_TEST_CREDENTIALS, PG_ENV, S3, LiveServer, free_port, in_ci


def pytest_sessionstart(session: pytest.Session) -> None:
    if in_ci() and not os.environ.get(PG_ENV):
        raise pytest.UsageError(f"CI must run the Postgres tests: set {PG_ENV}")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty database: a SQLite file, or a schema of its own in the test Postgres."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'quiver.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"Postgres tests need {PG_ENV} (CI sets it)")
    schema = f"quiver_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:  # fails loudly when Postgres is unreachable
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield (
            make_url(base)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    port = free_port()
    os.environ.update(AWS_TEST_CREDENTIALS)
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, "moto_server exited"
            try:
                httpx.get(endpoint, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        yield S3(endpoint)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """A hub that routes on every module: the suite's two-layer adapters test the routing formula on all
    of theirs. The default choice of modules has its own tests (tests/api/test_route_modules.py). Every
    module's float32 prototypes live in a file, as a large library's do (registry/search/row_store.py)."""
    return Settings(
        home=tmp_path / "home",
        database_url=database_url,
        max_upload_bytes=4 * 1024 * 1024,
        route_modules=".*",
        index_spill_bytes=0,
    )


@pytest.fixture
def state(settings: Settings) -> Iterator[Services]:
    s = Services.open(settings)
    yield s
    s.close()


@pytest.fixture
def server(settings: Settings) -> Iterator[LiveServer]:
    """A real uvicorn server on a free port, serving a fresh database and blob store."""
    port = free_port()
    server = uvicorn.Server(
        server_config(create_app(settings), settings, "127.0.0.1", port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test hub did not start")
        time.sleep(0.02)
    state = Services.open(settings, migrate=False)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", settings, state)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        state.close()
