"""The catalogue's domain, called directly (no HTTP, no server): publishing, reading as a principal may,
deleting, and a refused upload that leaves nothing behind, on a real SQLite file and a real blob store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.migrations import upgrade
from quiver_hub.registry.accounts.access import ANONYMOUS, Principal, authenticate
from quiver_hub.registry.accounts.tokens import token_for_user
from quiver_hub.registry.catalogue import edits, publishing, reads
from quiver_hub.registry.catalogue.metadata import AdapterMeta
from quiver_hub.registry.db import make_engine, session_factory
from quiver_hub.registry.errors import InvalidAdapter, NotFound
from quiver_hub.registry.models import AdapterRepo, Blob, Version
from quiver_hub.registry.search.embedder import TextEmbedder, default_embedder
from quiver_hub.registry.storage.blobs import BlobStore, StagedFile
from tests.support.adapters import write_adapter


@dataclass
class Registry:
    sessions: sessionmaker[Session]
    store: BlobStore
    embedder: TextEmbedder

    def principal(self, user: str) -> Principal:
        with self.sessions() as s:
            token = token_for_user(s, user=user)
            s.commit()
            return authenticate(s, token)

    def stage(self, folder: Path) -> dict[str, StagedFile]:
        staged = {}
        for path in sorted(folder.iterdir()):
            with path.open("rb") as f:
                staged[path.name] = self.store.stage(f)
        return staged

    def publish(self, who: Principal, repo: str, folder: Path, **meta: object) -> Version:
        namespace, name = repo.split("/")
        files = self.stage(folder)
        return publishing.publish(
            self.sessions, self.store, who, namespace, name, files, AdapterMeta(**meta), self.embedder
        )


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return default_embedder()


@pytest.fixture
def registry(tmp_path: Path, embedder: TextEmbedder) -> Registry:
    engine = make_engine(f"sqlite:///{tmp_path / 'quiver.db'}")
    upgrade(engine)
    return Registry(session_factory(engine), BlobStore(tmp_path / "blobs"), embedder)


def test_versions_are_numbered_and_a_private_adapter_is_seen_by_its_owner_alone(
    registry: Registry, tmp_path: Path
) -> None:
    alice, bob = registry.principal("alice"), registry.principal("bob")
    first = registry.publish(alice, "alice/secret", write_adapter(tmp_path / "a", seed=1), visibility="private")
    second = registry.publish(alice, "alice/secret", write_adapter(tmp_path / "b", seed=2))
    assert (first.number, second.number) == (1, 2) and first.revision != second.revision
    with registry.sessions() as s:
        assert reads.get_adapter(s, alice, "alice", "secret").visibility == "private"
        assert reads.may_see(s, alice, "alice/secret")
        for other in (bob, ANONYMOUS):  # exactly like an adapter that does not exist
            assert not reads.may_see(s, other, "alice/secret")
            with pytest.raises(NotFound):
                reads.get_adapter(s, other, "alice", "secret")
        assert [a.name for a in reads.recent_adapters(s, bob)] == []


def test_a_deleted_version_number_is_never_given_again(registry: Registry, tmp_path: Path) -> None:
    alice = registry.principal("alice")
    registry.publish(alice, "alice/a", write_adapter(tmp_path / "one", seed=1))
    registry.publish(alice, "alice/a", write_adapter(tmp_path / "two", seed=2))
    edits.delete_adapter(registry.sessions, registry.store, alice, "alice", "a", "2")
    assert registry.publish(alice, "alice/a", write_adapter(tmp_path / "three", seed=3)).number == 3


def test_a_refused_upload_leaves_no_row_and_no_blob(registry: Registry, tmp_path: Path) -> None:
    alice = registry.principal("alice")
    folder = write_adapter(tmp_path / "bad")
    (folder / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InvalidAdapter, match="safetensors"):
        registry.publish(alice, "alice/bad", folder)
    with registry.sessions() as s:
        assert s.scalar(select(func.count()).select_from(AdapterRepo)) == 0
        assert s.scalar(select(func.count()).select_from(Blob)) == 0
    assert list(registry.store.objects.rglob("*.*")) == [] and list(registry.store.tmp.iterdir()) == []
