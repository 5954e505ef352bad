"""docs/architecture.md's module table ("Where things are") names every module of registry/, hub/ and
client/, and nothing that is not in the tree: the design of record cannot drift from the floor plan."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("registry", "hub", "client")


def table_paths(text: str) -> set[str]:
    """The paths the first cell of each row of "Where things are" names. A bare name (`orgs.py`) is in the
    folder of the row's first path (`registry/accounts/tokens.py`)."""
    section = text.split("### Where things are", 1)[1].split("\n#", 1)[0]
    paths = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        names = re.findall(r"`([^`]+)`", line.split("|")[1])
        folder = names[0].rpartition("/")[0]
        paths |= {name if "/" in name.rstrip("/") else f"{folder}/{name}" for name in names}
    return {p.rstrip("/") for p in paths}


def tree_paths(root: Path) -> set[str]:
    """Every module (and C source) of the three folders, and the pages' template and static folders."""
    found = set()
    for folder in FOLDERS:
        for path in (root / folder).rglob("*"):
            relative = path.relative_to(root).as_posix()
            if "__pycache__" in relative or path.name in ("__init__.py", "__main__.py"):
                continue
            if path.suffix in (".py", ".c"):
                found.add(relative)
            elif path.is_dir() and path.name in ("templates", "static"):
                found.add(relative)
    return found


def test_the_module_table_matches_the_tree() -> None:
    listed = table_paths((ROOT / "docs" / "architecture.md").read_text())
    present = tree_paths(ROOT)
    assert sorted(present - listed) == [], "modules the table does not name"
    assert sorted(listed - present) == [], "the table names what is not in the tree"


def test_a_module_missing_from_the_table_is_caught(tmp_path: Path) -> None:
    for folder in FOLDERS:
        (tmp_path / folder / "sub").mkdir(parents=True)
    (tmp_path / "registry" / "sub" / "a.py").write_text("")
    (tmp_path / "registry" / "sub" / "b.py").write_text("")
    text = "### Where things are\n\n| module | holds |\n|---|---|\n| `registry/sub/a.py`, `gone.py` | things |\n"
    assert table_paths(text) == {"registry/sub/a.py", "registry/sub/gone.py"}
    assert tree_paths(tmp_path) - table_paths(text) == {"registry/sub/b.py"}
    assert table_paths(text) - tree_paths(tmp_path) == {"registry/sub/gone.py"}


def test_no_module_is_much_over_400_lines() -> None:
    """Each file does one thing: none of the three folders holds a module past ~400 lines."""
    long = {
        p.relative_to(ROOT).as_posix(): n
        for folder in FOLDERS
        for p in (ROOT / folder).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 420
    }
    assert long == {}
