"""The public API kept through the restructuring: `from quiver_hub import ...` as before, and the modules
that moved still import, each with a DeprecationWarning that names its new place."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import quiver_hub

MOVED = {
    "quiver_hub.adapter": "quiver_hub.local.adapter",
    "quiver_hub.arrow": "quiver_hub.local.arrow",
    "quiver_hub.capture": "quiver_hub.local.capture",
    "quiver_hub.composition": "quiver_hub.local.composition",
    "quiver_hub.fused": "quiver_hub.local.fused",
    "quiver_hub.merging": "quiver_hub.local.merging",
    "quiver_hub.gateway": "quiver_hub.serving.gateway",
}


def test_every_public_name_still_imports() -> None:
    for name in quiver_hub.__all__:
        assert getattr(quiver_hub, name) is not None
    assert issubclass(quiver_hub.Hub, importlib.import_module("quiver_hub.api").HubClient)


def test_a_moved_module_imports_with_a_warning() -> None:
    """In a fresh process, so that none of the names has been imported before."""
    code = (
        "import warnings, sys, importlib, json\n"
        f"moved = {MOVED!r}\n"
        "out = {}\n"
        "for old, new in moved.items():\n"
        "    with warnings.catch_warnings(record=True) as w:\n"
        "        warnings.simplefilter('always')\n"
        "        module = importlib.import_module(old)\n"
        "    out[old] = [module is sys.modules[new], [str(x.message) for x in w if x.category is DeprecationWarning]]\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {old: [True, [f"{old} is deprecated: import {new}"]] for old, new in MOVED.items()}


def test_the_old_hub_class_path_warns_and_gives_the_whole_client() -> None:
    api = importlib.import_module("quiver_hub.api")
    with pytest.warns(DeprecationWarning, match="use quiver_hub.Hub"):
        old = api.Hub
    assert old is quiver_hub.Hub
    with pytest.raises(AttributeError):
        _ = api.NoSuchThing
