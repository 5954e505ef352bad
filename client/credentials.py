"""Where `quiver login` keeps the endpoint and token: $XDG_CONFIG_HOME/quiver/credentials.json
(~/.config/quiver/...), readable by the user only. QUIVER_ENDPOINT and QUIVER_TOKEN take precedence."""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"


def credentials_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "quiver" / "credentials.json"


def stored() -> dict[str, str]:
    try:
        data = json.loads(credentials_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save(endpoint: str, token: str) -> Path:
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"endpoint": endpoint, "token": token}, f)
    return path


def forget() -> Path | None:
    """Remove the saved credentials; the path removed, or None when there were none."""
    path = credentials_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path


def default_endpoint() -> str:
    return os.environ.get("QUIVER_ENDPOINT") or stored().get("endpoint") or DEFAULT_ENDPOINT


def default_token() -> str | None:
    return os.environ.get("QUIVER_TOKEN") or stored().get("token")
