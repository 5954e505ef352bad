"""HubClient's typed answers stay the JSON objects they were: dicts with the same keys and values, equal to
the JSON, serialisable, and read as attributes too (nested objects included)."""

from __future__ import annotations

import json

import pytest

from quiver_hub.results import AdapterInfo, Hit, VersionInfo, records

ADAPTER = {
    "id": "alice/a",
    "namespace": "alice",
    "name": "a",
    "base_model": "tiny",
    "task": None,
    "tags": ["x"],
    "description": "",
    "license": None,
    "visibility": "public",
    "created_at": "2026-12-03T00:00:00Z",
    "updated_at": "2026-12-03T00:00:00Z",
    "latest": {"id": "alice/a", "version": 2, "revision": "f" * 40},
}


def test_a_record_is_its_json_and_reads_as_attributes() -> None:
    info = AdapterInfo(ADAPTER)
    assert info == ADAPTER and json.loads(json.dumps(info)) == ADAPTER and dict(info) == ADAPTER
    assert info.latest.revision == info["latest"]["revision"] == "f" * 40
    assert info.task is None and info.tags == ["x"]
    assert "latest" in dir(info)
    with pytest.raises(AttributeError, match="no field 'nope'"):
        _ = info.nope
    assert AdapterInfo({**ADAPTER, "latest": None}).latest is None


def test_nested_lists_become_records_and_new_fields_are_kept() -> None:
    version = VersionInfo(
        {"id": "alice/a", "files": [{"path": "adapter_config.json", "sha256": "0", "size": 3}], "new": 1}
    )
    assert version.files[0].path == "adapter_config.json" and version.new == 1
    hits = records(Hit, [{"id": "alice/a", "score": 0.5}, "not an object"])
    assert hits[0].score == 0.5 and hits[1] == "not an object"
