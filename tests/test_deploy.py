"""docker-compose.yml and the Dockerfile describe a hub that can run (no Docker engine here: parsed)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from sqlalchemy.engine import make_url

from quiver_hub.hub.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_compose_runs_the_hub_against_postgres() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "hub"}
    pg, hub = services["postgres"], services["hub"]

    assert pg["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert hub["build"] == "." and (ROOT / "Dockerfile").is_file()
    assert hub["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "8000:8000" in hub["ports"]

    env = hub["environment"]
    url = make_url(env["QUIVER_DATABASE_URL"])
    assert url.drivername == "postgresql+psycopg" and url.host == "postgres" and url.port == 5432
    assert (url.username, url.password, url.database) == (
        pg["environment"]["POSTGRES_USER"],
        pg["environment"]["POSTGRES_PASSWORD"],
        pg["environment"]["POSTGRES_DB"],
    )
    # Every variable the hub is given is one it reads.
    known = {f"QUIVER_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known, set(env) - known
    settings = Settings(**{k.removeprefix("QUIVER_").lower(): v for k, v in env.items()})
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in hub["volumes"]}
    assert mounts[env["QUIVER_HOME"]] in compose["volumes"]


def test_dockerfile_installs_and_serves() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert "torch==2.13.0" in text and ".[server]" in text
    for folder in ("hub", "registry", "client", "migrations"):
        assert f"COPY {folder} ./{folder}" in text and (ROOT / folder).is_dir()
    assert 'CMD ["quiver", "serve"]' in text and "QUIVER_HOST=0.0.0.0" in text and "EXPOSE 8000" in text
