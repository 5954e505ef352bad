"""Servers for tests and benchmarks: a free port, a real `quiver serve` process, a live uvicorn hub in this
process, a moto S3 server, an operator token, and the programs a test needs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from quiver_hub.hub.services import Services
from quiver_hub.hub.settings import Settings
from quiver_hub.registry.accounts.tokens import token_for_user

PG_ENV = "QUIVER_TEST_DATABASE_URL"


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
def serve_child(
    env: dict[str, str], cwd: Path | None = None, timeout: float = 120, log: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`quiver serve` in a child process (the real CLI), on QUIVER_PORT; yields its URL and the process
    once ready. Its output goes to `log` (a file: a pipe nobody reads would stall a busy server)."""
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
        yield url, server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        if own_log:
            log.unlink(missing_ok=True)


@contextmanager
def serve_process(
    env: dict[str, str], cwd: Path | None = None, timeout: float = 120, log: Path | None = None
) -> Iterator[str]:
    """serve_child's URL alone."""
    with serve_child(env, cwd, timeout, log) as (url, _):
        yield url


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
