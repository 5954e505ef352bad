"""What HubClient returns, typed: each answer is the hub's JSON object, still a dict (`hit["score"]`,
`json.dumps(info)`, `dict(info)` work as they always did), with its fields also read as attributes
(`hit.score`, `info.latest.revision`) and declared here for editors and type checkers, as huggingface_hub's
`ModelInfo` is. A field the hub adds later is in the dict before it is declared here."""

from __future__ import annotations

from typing import Any


class Record(dict):
    """A JSON object with attribute access to its keys; nested objects named in `_nested` are records too."""

    _nested: dict[str, type[Record]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for key, kind in self._nested.items():
            value = self.get(key)
            if isinstance(value, dict):
                self[key] = kind(value)
            elif isinstance(value, list):
                self[key] = [kind(v) if isinstance(v, dict) else v for v in value]

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self})


class VersionRef(Record):
    """A version named the one way the API names versions."""

    id: str
    version: int
    revision: str


class FileInfo(Record):
    path: str
    sha256: str
    size: int


class VersionInfo(Record):
    """One version of an adapter (`Hub.info("ns/name@rev")`, `Hub.push`)."""

    id: str
    version: int
    revision: str
    base_model: str
    rank: int
    alpha: float
    target_modules: list[str]
    ranks: dict[str, int]
    num_parameters: int
    total_size: int
    published_by: str | None
    created_at: str
    adapter_config: dict[str, Any]
    files: list[FileInfo]
    derived_from: dict[str, Any] | None
    tags: list[str]
    title: str
    message: str
    notices: list[str]
    _nested = {"files": FileInfo}


class AdapterInfo(Record):
    """An adapter and its latest version's name (`Hub.info("ns/name")`, `Hub.list()`)."""

    id: str
    namespace: str
    name: str
    base_model: str
    task: str | None
    tags: list[str]
    description: str
    license: str | None
    visibility: str
    created_at: str
    updated_at: str
    latest: VersionRef | None
    _nested = {"latest": VersionRef}


class Hit(Record):
    """One adapter of a search or route answer, best first."""

    id: str
    version: int
    revision: str
    score: float
    base_model: str
    task: str | None


class TagInfo(Record):
    """A tag: a name for one version."""

    name: str
    version: VersionRef
    message: str
    created_at: str
    _nested = {"version": VersionRef}


def records(kind: type[Record], items: list[Any]) -> list[Any]:
    """Each JSON object of a list as a `kind`."""
    return [kind(item) if isinstance(item, dict) else item for item in items]
