"""The one settings object: environment variables prefixed QUIVER_ (docs/operations.md, "Configuration").

The server's limits live here (request bodies, connections, timeouts); the domain's limits on fields,
files and adapters are registry/limits.py. Both are listed in the README.
"""

from __future__ import annotations

import os
import re
import secrets
from importlib.metadata import version
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from quiver_hub.registry.search.route_modules import DEFAULT_ROUTE_MODULES

VERSION = version("quiver-hub")  # the installed distribution's, as the client's quiver_hub.__version__


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUIVER_")

    home: Path = Path(".quiver")
    database_url: str | None = None  # default: SQLite file under home
    host: str = "127.0.0.1"
    port: int = 8000
    # Request bodies, checked from Content-Length before anything is read, and while reading.
    max_upload_bytes: int = 512 * 1024 * 1024  # publishes and Hugging Face commits
    max_route_bytes: int = 64 * 1024 * 1024  # /v1/route hidden states
    max_json_bytes: int = 1024 * 1024  # every other request
    # Connections: beyond max_connections a new connection is answered 503 and closed; a connection that
    # has not sent a whole request head within header_timeout_s, or stays idle between requests for
    # keep_alive_s, is closed.
    max_connections: int = 1000
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    # Blobs: under home (None), or an S3-compatible bucket, s3://bucket/prefix. Endpoint, region and the
    # public endpoint (the host clients reach, for presigned URLs) for S3-compatible stores; credentials
    # come from the usual AWS_* variables or files.
    blob_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_public_endpoint_url: str | None = None
    blob_cache_bytes: int = 10 * 1024**3  # the local read cache of an object store
    # Downloads redirected to a short-lived presigned URL of the store (default: yes for S3; the local
    # store always streams through the hub).
    download_redirect: bool | None = None
    presign_seconds: int = 300
    # Local blobs served by a fronting nginx: the hub answers a download with X-Accel-Redirect to this
    # prefix + the blob's path under objects/ (an `internal` location aliasing QUIVER_HOME/blobs/objects/,
    # docs/nginx.conf), and nginx sends the file with sendfile, Range included.
    accel_redirect: str | None = None
    # The modules the hub routes on: a regular expression; only the prototypes of the modules whose names
    # it matches in full are held in memory and routed on (an adapter that adapts none of them: all of its
    # modules). Default: the value projection of every layer (registry/search/route_modules.py, chosen in
    # bench/README.md, "A hub on its defaults"). ".*" (or empty): every module.
    route_modules: str = DEFAULT_ROUTE_MODULES
    # A module's float32 prototypes live in a file in QUIVER_HOME/indexes, mapped, once they take this many
    # bytes (registry/search/row_store.py): a route reads only its candidates' rows, so memory holds the
    # int8 codes and the page cache the rows. 0: every module's; a very large value: none. (Settings is
    # imported by the command line, which loads no numpy: registry.search.row_store is not imported here.)
    index_spill_bytes: int = Field(default=8 << 20, ge=0)
    # Threads one publish's analysis splits its modules between (torch runs on one thread in each);
    # 1 keeps a publish on one core, leaving the rest to requests.
    analysis_threads: int = min(2, len(os.sched_getaffinity(0)))
    # Signs the pages' session cookies; default: made once and kept in QUIVER_HOME (replicas: set one).
    secret_key: str | None = None

    @field_validator("route_modules")
    @classmethod
    def _a_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except (re.error, OverflowError, RecursionError) as e:  # 'a{99999999999}' overflows, deep nesting recurses
            raise ValueError(f"not a regular expression Quiver can use: {e}") from e
        return value

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'quiver.db').resolve()}"

    @property
    def index_dir(self) -> Path:
        """Where the search indexes' snapshot is kept (registry.search.snapshot)."""
        return self.home / "indexes"

    @property
    def blob_root(self) -> Path:
        return self.home / "blobs"


class SettingsError(ValueError):
    """Settings that cannot be used, one line per variable: `QUIVER_NAME: what is wrong`."""


def load_settings() -> Settings:
    """The settings from the environment; SettingsError naming each variable that is wrong and why."""
    try:
        return Settings()
    except ValidationError as e:
        lines = []
        for problem in e.errors():
            name = "QUIVER_" + "_".join(str(part) for part in problem["loc"]).upper()
            lines.append(f"{name}: {problem['msg'].removeprefix('Value error, ')} (got {problem.get('input')!r})")
        raise SettingsError("\n".join(lines)) from None


def secret_key(settings: Settings) -> str:
    """QUIVER_SECRET_KEY, else one made once and kept in QUIVER_HOME (replicas must share one: set it)."""
    if settings.secret_key:
        return settings.secret_key
    path = settings.home / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        tmp = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        try:  # whole or absent, and the first of two processes starting at once wins
            os.link(tmp, path)
        except FileExistsError:
            key = path.read_text().strip()
        finally:
            tmp.unlink()
        return key
