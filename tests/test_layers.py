"""The layer contract (docs/architecture.md, "The layers"), checked on every import of every module:

    hub        -> hub, registry, migrations
    registry   -> registry                  (never hub, the client, or migrations)
    migrations -> migrations, registry
    client     -> client, registry.lora     (the thin client: nothing else of the server; "registry.lora"
                                             is the shared layer: registry/lora.py and peft_format.py)
    registry.lora -> registry.lora only     (the client imports it: it stays torch + safetensors)

and the one import name: every module of the repository imports quiver_hub.*, never the folder names
(client, hub, registry, migrations), which are not installed (ruff's banned-api says the same in editors).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "client": "quiver_hub",
    "hub": "quiver_hub.hub",
    "registry": "quiver_hub.registry",
    "migrations": "quiver_hub.migrations",
}
OLD_NAMES = set(FOLDERS)
ALLOWED = {
    "hub": {"hub", "registry", "registry.lora", "migrations"},
    "registry": {"registry", "registry.lora"},
    "registry.lora": {"registry.lora"},
    "migrations": {"migrations", "registry", "registry.lora"},
    "client": {"client", "registry.lora"},
}


def layer_of(module: str) -> str:
    """The layer of a quiver_hub module name."""
    for prefix, layer in (
        ("quiver_hub.registry.lora", "registry.lora"),
        ("quiver_hub.registry.peft_format", "registry.lora"),
        ("quiver_hub.registry", "registry"),
        ("quiver_hub.hub", "hub"),
        ("quiver_hub.migrations", "migrations"),
    ):
        if module == prefix or module.startswith(prefix + "."):
            return layer
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
                elif imported.split(".")[0] == "quiver_hub" and imported != "quiver_hub":
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


def test_a_planted_violation_is_caught(tmp_path: Path) -> None:
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "registry" / "lora.py").write_text("import torch\n")
    (tmp_path / "registry" / "reads.py").write_text("from quiver_hub.registry.lora import split_key\n")
    assert violations(tmp_path) == []  # allowed imports pass

    (tmp_path / "registry" / "bad.py").write_text("import os\n\nfrom quiver_hub.hub.app import create_app\n")
    (tmp_path / "client" / "bad.py").write_text("from quiver_hub.registry import reads\n")
    (tmp_path / "registry" / "lora.py").write_text("from . import reads\n")
    (tmp_path / "hub" / "old.py").write_text("import registry.models\n")
    (tmp_path / "hub" / "settings.py").write_text("")
    (tmp_path / "migrations" / "env.py").write_text("from ..hub import settings\n")
    assert violations(tmp_path) == [
        "client/bad.py:1: client may not import registry (quiver_hub.registry.reads)",
        "hub/old.py:1: imports 'registry.models'; the import name is quiver_hub",
        "registry/bad.py:3: registry may not import hub (quiver_hub.hub.app)",
        "registry/lora.py:1: registry.lora may not import registry (quiver_hub.registry.reads)",
        "migrations/env.py:1: migrations may not import hub (quiver_hub.hub.settings)",
    ]


def test_public_names_are_never_submodule_names() -> None:
    """`from quiver_hub import merge` must give the function even after something imported a submodule of
    that name (which binds the package attribute): the lazy exports and the modules never share a name."""
    import quiver_hub

    modules = {p.stem for p in (ROOT / "client").glob("*.py")} | {"hub", "registry", "migrations"}
    assert not set(quiver_hub.__all__) & modules
