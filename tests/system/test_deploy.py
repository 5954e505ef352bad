"""docker-compose.yml and the Dockerfile describe a hub that can run (no Docker engine here: parsed)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from sqlalchemy.engine import make_url

from quiver_hub.hub.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_two_replicas_on_postgres_and_minio_behind_one_port() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "minio", "bucket", "hub-1", "hub-2", "proxy"}
    pg, minio = services["postgres"], services["minio"]
    assert pg["image"].startswith("postgres:") and "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert minio["image"].startswith("minio/minio") and "9000:9000" in minio["ports"]
    assert "mc mb" in " ".join(services["bucket"]["entrypoint"])

    homes = set()
    for name in ("hub-1", "hub-2"):
        hub = services[name]
        assert hub["build"] == "." and (ROOT / "Dockerfile").is_file()
        assert hub["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert hub["depends_on"]["bucket"]["condition"] == "service_completed_successfully"
        assert "ports" not in hub  # reached through the proxy only
        env = hub["environment"]
        url = make_url(env["QUIVER_DATABASE_URL"])
        assert url.drivername == "postgresql+psycopg" and url.host == "postgres" and url.port == 5432
        assert (url.username, url.password, url.database) == (
            pg["environment"]["POSTGRES_USER"],
            pg["environment"]["POSTGRES_PASSWORD"],
            pg["environment"]["POSTGRES_DB"],
        )
        # Every QUIVER_ variable the hub is given is one it reads, and the bucket is MinIO's.
        known = {f"QUIVER_{name.upper()}" for name in Settings.model_fields}
        quiver_env = {k: v for k, v in env.items() if k.startswith("QUIVER_")}
        assert set(quiver_env) <= known, set(quiver_env) - known
        settings = Settings(**{k.removeprefix("QUIVER_").lower(): v for k, v in quiver_env.items()})
        assert (settings.host, settings.port) == ("0.0.0.0", 8000)
        assert settings.blob_url == "s3://quiver/blobs" and settings.s3_endpoint_url == "http://minio:9000"
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            minio["environment"]["MINIO_ROOT_USER"],
            minio["environment"]["MINIO_ROOT_PASSWORD"],
        )
        mounts = {v.split(":")[1]: v.split(":")[0] for v in hub["volumes"]}
        assert mounts[settings.home.as_posix()] in compose["volumes"]
        homes.add(mounts[settings.home.as_posix()])
    assert len(homes) == 2  # no shared folder between the replicas

    proxy = services["proxy"]
    assert "8000:8000" in proxy["ports"] and set(proxy["depends_on"]) == {"hub-1", "hub-2"}
    nginx = compose["configs"][proxy["configs"][0]["source"]]["content"]
    assert "server hub-1:8000" in nginx and "server hub-2:8000" in nginx and "client_max_body_size 0" in nginx


def test_dockerfile_installs_and_serves() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert "torch==2.13.0" in text and ".[server]" in text
    for folder in ("hub", "registry", "client", "migrations"):
        assert f"COPY {folder} ./{folder}" in text and (ROOT / folder).is_dir()
    assert 'CMD ["quiver", "serve"]' in text and "QUIVER_HOST=0.0.0.0" in text and "EXPOSE 8000" in text
