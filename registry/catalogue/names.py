"""Names of namespaces and adapters: the Hugging Face repo-id grammar."""

import re

from quiver_hub.registry.errors import InvalidName

_PART = re.compile(r"[\w\-.]{1,96}", re.ASCII)


def check_part(value: str, what: str) -> str:
    """Validate one side of `namespace/name`; returns it unchanged or raises InvalidName."""
    if not _PART.fullmatch(value or ""):
        raise InvalidName(f"{what} {value!r} is not valid: use 1 to 96 letters, digits, '-', '_' or '.'")
    if "--" in value or ".." in value:
        raise InvalidName(f"{what} {value!r} is not valid: '--' and '..' are not allowed")
    if value.startswith(("-", ".")) or value.endswith(("-", ".")):
        raise InvalidName(f"{what} {value!r} is not valid: it cannot start or end with '-' or '.'")
    if value.endswith(".git"):
        raise InvalidName(f"{what} {value!r} is not valid: it cannot end with '.git'")
    return value


def check_repo_id(namespace: str, name: str) -> tuple[str, str]:
    return check_part(namespace, "namespace"), check_part(name, "adapter name")


def check_file_path(path: str) -> str:
    """A file's path inside an adapter folder: relative, no '..', no backslashes, no empty parts."""
    parts = path.split("/")
    if (
        not path
        or len(path) > 255
        or path.startswith("/")
        or "\\" in path
        or any(p in ("", ".", "..") for p in parts)
        or any(ord(c) < 32 for c in path)
    ):
        raise InvalidName(f"file path {path!r} is not a valid relative path inside an adapter")
    return path
