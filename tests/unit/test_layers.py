"""The layer contract (docs/architecture.md, "The layers"), checked on every import of every module, lazy
ones and TYPE_CHECKING ones included, with nothing whitelisted:

    registry.lora  -> registry.lora                      (the shared format: torch, safetensors, numpy)
    registry       -> registry, registry.lora            (never hub, the client, or migrations)
    migrations     -> migrations, registry, registry.lora
    hub            -> hub, registry, registry.lora, migrations
    client.http    -> client.http, client.base           (api, cache, credentials, routing: no model work)
    client.local   -> client.local, client.base, registry.lora   (the model work: no HTTP)
    client.base    -> client.base                        (errors, paths)
    client         -> every client layer, registry.lora  (the package root, workflows' Hub, the CLI, serving)

and the one import name: every module of the repository imports quiver_hub.*, never the folder names
(client, hub, registry, migrations), which are not installed (ruff's banned-api says the same in editors).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {
    "client": "quiver_hub",
    "hub": "quiver_hub.hub",
    "registry": "quiver_hub.registry",
    "migrations": "quiver_hub.migrations",
}
OLD_NAMES = set(FOLDERS)
CLIENT = {"client", "client.http", "client.local", "client.base"}
ALLOWED = {
    "registry.lora": {"registry.lora"},
    "registry": {"registry", "registry.lora"},
    "migrations": {"migrations", "registry", "registry.lora"},
    "hub": {"hub", "registry", "registry.lora", "migrations"},
    "client.http": {"client.http", "client.base"},
    "client.local": {"client.local", "client.base", "registry.lora"},
    "client.base": {"client.base"},
    "client": CLIENT | {"registry.lora"},
}
# module-name prefix -> layer, the longest match wins
PREFIXES = {
    "quiver_hub.registry.lora": "registry.lora",
    "quiver_hub.registry": "registry",
    "quiver_hub.hub": "hub",
    "quiver_hub.migrations": "migrations",
    "quiver_hub.local": "client.local",
    **{
        f"quiver_hub.{m}": "client.http"
        for m in ("api", "cache", "credentials", "results", "retries", "routing", "upload_files")
    },
    **{f"quiver_hub.{m}": "client.base" for m in ("errors", "paths")},
}


def layer_of(module: str) -> str:
    """The layer of a quiver_hub module name (the package root and everything else of the client:
    "client")."""
    for prefix in sorted(PREFIXES, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return PREFIXES[prefix]
    return "client"


def module_name(root: Path, path: Path) -> str:
    folder, *rest = path.relative_to(root).with_suffix("").parts
    parts = [FOLDERS[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(root: Path, name: str) -> bool:
    """Is quiver_hub.<...> `name` a module or package of the tree at root (not a name inside one)?"""
    folder = next((f for f, n in sorted(FOLDERS.items(), key=lambda kv: -len(kv[1])) if name.startswith(n)), None)
    if folder is None or not (name == FOLDERS[folder] or name.startswith(FOLDERS[folder] + ".")):
        return False
    rest = name.removeprefix(FOLDERS[folder]).strip(".").split(".") if name != FOLDERS[folder] else []
    path = root.joinpath(folder, *rest)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path, module: str, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in a file, relative ones resolved; `from package import
    module` counts as importing that module."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                name = f"{base}.{alias.name}"
                yield node.lineno, name if is_module(root, name) else base


def violations(root: Path) -> list[str]:
    found = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            module = module_name(root, path)
            source = layer_of(module)
            for line, imported in imports(path, module, root):
                where = f"{path.relative_to(root)}:{line}"
                if imported.split(".")[0] in OLD_NAMES:
                    found.append(f"{where}: imports {imported!r}; the import name is quiver_hub")
                elif imported.split(".")[0] == "quiver_hub":
                    target = layer_of(imported)
                    if target != source and target not in ALLOWED[source]:
                        found.append(f"{where}: {source} may not import {target} ({imported})")
    return found


def old_names(root: Path, folders: tuple[str, ...]) -> list[str]:
    """Imports of the folder names anywhere else (tests, benchmarks, examples)."""
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            for line, imported in imports(path, f"{folder}.{path.stem}", root):
                if imported.split(".")[0] in OLD_NAMES:
                    found.append(f"{path.relative_to(root)}:{line}: imports {imported!r}")
    return found


def test_the_code_keeps_the_layer_contract() -> None:
    assert violations(ROOT) == []


def test_nothing_imports_the_folder_names() -> None:
    assert old_names(ROOT, ("tests", "bench", "examples")) == []


def plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A tree of the project's shape, with imports every layer may make."""
    plant(
        tmp_path,
        {
            **{f"{folder}/__init__.py": "" for folder in FOLDERS},
            "registry/lora/__init__.py": "",
            "registry/lora/algebra.py": "import torch\n",
            "registry/catalogue/__init__.py": "",
            "registry/catalogue/reads.py": "from quiver_hub.registry.lora.algebra import split_key\n",
            "hub/settings.py": "from quiver_hub.registry.catalogue import reads\n",
            "migrations/env.py": "from quiver_hub.registry import models\n",
            "client/errors.py": "",
            "client/api.py": "from quiver_hub.errors import HubError\n",
            "client/local/__init__.py": "",
            "client/local/merging.py": "from quiver_hub.registry.lora import algebra\n",
            "client/workflows.py": "from quiver_hub.api import HubClient\nfrom quiver_hub.local import merging\n",
        },
    )
    return tmp_path


def test_allowed_imports_pass(tree: Path) -> None:
    assert violations(tree) == []


@pytest.mark.parametrize(
    ("name", "text", "found"),
    [
        (
            "registry/bad.py",
            "import os\n\nfrom quiver_hub.hub.app import create_app\n",
            "registry/bad.py:3: registry may not import hub (quiver_hub.hub.app)",
        ),
        (
            "registry/lora/bad.py",
            "from ..catalogue import reads\n",
            "registry/lora/bad.py:1: registry.lora may not import registry (quiver_hub.registry.catalogue.reads)",
        ),
        (
            "migrations/bad.py",
            "from ..hub import settings\n",
            "migrations/bad.py:1: migrations may not import hub (quiver_hub.hub.settings)",
        ),
        ("hub/bad.py", "import quiver_hub\n", "hub/bad.py:1: hub may not import client (quiver_hub)"),
        (
            "hub/old.py",
            "import registry.models\n",
            "hub/old.py:1: imports 'registry.models'; the import name is quiver_hub",
        ),
        (
            "client/bad.py",
            "from quiver_hub.registry.catalogue import reads\n",
            "client/bad.py:1: client may not import registry (quiver_hub.registry.catalogue.reads)",
        ),
        (
            "client/cache.py",
            "def f():\n    from quiver_hub.local import merging\n",
            "client/cache.py:2: client.http may not import client.local (quiver_hub.local.merging)",
        ),
        (
            "client/local/arrow.py",
            "from quiver_hub.api import HubClient\n",
            "client/local/arrow.py:1: client.local may not import client.http (quiver_hub.api)",
        ),
        (
            "client/local/arrow.py",
            "from quiver_hub import workflows\n",
            "client/local/arrow.py:1: client.local may not import client (quiver_hub.workflows)",
        ),
        (
            "client/paths.py",
            "from quiver_hub import api\n",
            "client/paths.py:1: client.base may not import client.http (quiver_hub.api)",
        ),
    ],
)
def test_a_planted_violation_is_caught(tree: Path, name: str, text: str, found: str) -> None:
    plant(tree, {name: text})
    assert violations(tree) == [found]


def test_public_names_are_never_submodule_names() -> None:
    """`from quiver_hub import merge` must give the function even after something imported a submodule of
    that name (which binds the package attribute): the lazy exports and the modules never share a name."""
    import quiver_hub

    client = ROOT / "client"
    modules = {p.stem for p in client.glob("*.py")} | {p.name for p in client.iterdir() if (p / "__init__.py").exists()}
    modules |= {"hub", "registry", "migrations"} | set(quiver_hub._MOVED)
    assert not set(quiver_hub.__all__) & modules
