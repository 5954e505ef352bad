"""A real nginx in front of a hub, configured by docs/nginx.conf (Debian's nginx; `make services`
installs it). Outside CI the tests skip when there is no nginx; in CI it must be there."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.servers import free_port, require_program

NGINX = os.environ.get("QUIVER_TEST_NGINX", "/usr/sbin/nginx")
CONFIG = Path(__file__).resolve().parents[2] / "docs" / "nginx.conf"


@contextmanager
def nginx(hub_url: str, home: Path, workdir: Path) -> Iterator[str]:
    """docs/nginx.conf as written, with its three site-specific values replaced: the port it listens
    on, the hub's address and QUIVER_HOME. Yields nginx's URL."""
    require_program(NGINX, "nginx")
    port = free_port()
    site = CONFIG.read_text()
    for old, new in (
        ("listen 8080;", f"listen 127.0.0.1:{port};"),
        ("http://127.0.0.1:8000", hub_url),
        ("/srv/quiver/", f"{home.resolve()}/"),
    ):
        assert old in site, f"docs/nginx.conf no longer has {old!r}"
        site = site.replace(old, new)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "site.conf").write_text(site)
    temp = "\n".join(
        f"    {kind}_temp_path {workdir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (workdir / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")  # workers must read the test's private folders
        + f"daemon off;\npid {workdir / 'nginx.pid'};\nerror_log {workdir / 'error.log'} warn;\n"
        + "events { worker_connections 256; }\n"
        + f"http {{\n    access_log off;\n{temp}\n    include {workdir / 'site.conf'};\n}}\n"
    )
    process = subprocess.Popen([NGINX, "-c", str(workdir / "nginx.conf"), "-p", str(workdir)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (workdir / "error.log").read_text()
            try:
                httpx.get(f"{url}/healthz")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
