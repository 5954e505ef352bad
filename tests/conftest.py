"""Shared fixtures: real databases (a SQLite file; a fresh schema in the real Postgres), a real
uvicorn server on a free port, and real adapters.

Postgres: QUIVER_TEST_DATABASE_URL names it (CI sets it). When it is set, an unreachable server is
an error, never a skip; in CI (CI=true) it must be set.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
from quiver_hub.registry.accounts.tokens import token_for_user

PG_ENV = "QUIVER_TEST_DATABASE_URL"


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


@dataclass
class S3:
    """A real S3-protocol server on loopback (moto's standalone server), started once for the session."""

    endpoint: str

    def bucket(self) -> str:
        """A new, empty bucket."""
        import boto3

        name = f"quiver-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(Bucket=name)
        return name

    def env(self, bucket: str) -> dict[str, str]:
        return {
            "QUIVER_BLOB_URL": f"s3://{bucket}/blobs",
            "QUIVER_S3_ENDPOINT_URL": self.endpoint,
            "QUIVER_S3_REGION": "us-east-1",
            **AWS_TEST_CREDENTIALS,
        }


AWS_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


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
    return Settings(home=tmp_path / "home", database_url=database_url, max_upload_bytes=4 * 1024 * 1024)


@pytest.fixture
def state(settings: Settings) -> Iterator[Services]:
    s = Services.open(settings)
    yield s
    s.close()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_program(path: str, tests: str) -> None:
    """A system program some tests drive (Debian's, installed by `make services`): outside CI, its
    tests skip when it is missing; in CI they fail."""
    if shutil.which(path) or os.path.exists(path):
        return
    if in_ci():
        pytest.fail(f"CI must run the {tests} tests: no {path} (make services installs it)")
    pytest.skip(f"{tests} tests need {path} (make services installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def operator_token(env: dict[str, str], user: str) -> str:
    """`quiver token create --user USER --init` as an operator runs it (the real CLI, on the database
    `env` names, created if new); the token it prints."""
    made = subprocess.run(
        [sys.executable, "-m", "quiver_hub", "token", "create", "--user", user, "--init"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


@contextmanager
def serve_process(
    env: dict[str, str], cwd: Path | None = None, timeout: float = 120, log: Path | None = None
) -> Iterator[str]:
    """`quiver serve` in a child process (the real CLI), on QUIVER_PORT; yields its URL once ready. Its
    output goes to `log` (a file: a pipe nobody reads would stall a busy server)."""
    url = f"http://127.0.0.1:{env['QUIVER_PORT']}"
    own_log = log is None  # a temporary file of ours: removed at the end (a failure has quoted it by then)
    log = log or Path(tempfile.mkstemp(prefix="quiver-serve-", suffix=".log")[1])
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "quiver_hub", "serve"],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "quiver serve did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        if own_log:
            log.unlink(missing_ok=True)


@dataclass
class LiveServer:
    url: str
    settings: Settings
    state: Services

    def token(self, user: str, org: str | None = None, scope: str = "write") -> str:
        with self.state.sessions() as session:
            token = token_for_user(session, user=user, org=org, scope=scope)
            session.commit()
        return token

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Run `quiver ARGS` in a subprocess against this hub's database and home."""
        env = {**os.environ, "QUIVER_HOME": str(self.settings.home), "QUIVER_DATABASE_URL": self.settings.db_url}
        return subprocess.run(
            [sys.executable, "-m", "quiver_hub", *args], env=env, capture_output=True, text=True, timeout=120
        )

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


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
