"""The one settings object: environment variables prefixed QUIVER_."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUIVER_")

    home: Path = Path(".quiver")
    database_url: str | None = None  # default: SQLite file under home
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 512 * 1024 * 1024

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'quiver.db').resolve()}"

    @property
    def blob_root(self) -> Path:
        return self.home / "blobs"
