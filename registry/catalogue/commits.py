"""A Hugging Face commit: the next version of an adapter, made from its latest version's files and the
commit's operations (files added, files and folders deleted). The hub's HF routes only translate the
protocol's lines into these calls; what a commit means is decided here, and published by writes.publish
exactly like a /v1 upload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

from sqlalchemy.orm import Session, sessionmaker

from quiver_hub.registry.accounts.access import Principal, require_write
from quiver_hub.registry.catalogue import reads
from quiver_hub.registry.catalogue.metadata import AdapterMeta
from quiver_hub.registry.catalogue.names import check_file_path, check_repo_id
from quiver_hub.registry.catalogue.publishing import publish
from quiver_hub.registry.errors import Conflict, InvalidRequest
from quiver_hub.registry.models import Version
from quiver_hub.registry.search.embedder import TextEmbedder
from quiver_hub.registry.storage.blobs import BlobStore, StagedFile


@dataclass
class Commit:
    """A commit being assembled: the files the next version will hold."""

    namespace: str
    name: str
    parent: str | None  # the revision it builds on (None: the adapter has no version yet)
    files: dict[str, StagedFile]
    staged: list[StagedFile] = field(default_factory=list)  # files this commit wrote, discarded on failure
    title: str = ""
    message: str = ""

    def header(self, summary: object, description: object, parent: object) -> None:
        """The commit's header: its title and message, and (when the client gives one) the parent it
        expects, which must be the latest version."""
        self.title = summary if isinstance(summary, str) else ""
        self.message = description if isinstance(description, str) else ""
        if parent and self.parent and parent != self.parent:
            raise Conflict(f"parent commit {parent} is not the latest revision {self.parent}")

    def add(self, store: BlobStore, path: str, content: BinaryIO, limit: int) -> None:
        path = check_file_path(path)
        staged = store.stage(content, limit)
        self.staged.append(staged)
        self.files[path] = staged

    def delete_file(self, path: str) -> None:
        self.files.pop(path, None)

    def delete_folder(self, path: str) -> None:
        prefix = path.rstrip("/") + "/"
        self.files = {p: f for p, f in self.files.items() if not p.startswith(prefix)}

    def discard(self, store: BlobStore) -> None:
        store.discard(self.staged)

    def publish(
        self, sessions: sessionmaker[Session], store: BlobStore, principal: Principal, embedder: TextEmbedder
    ) -> Version:
        """The next version. Files kept from the parent are its blobs, reused: if a concurrent delete
        removed them meanwhile, writes.publish refuses with Conflict rather than lose them."""
        try:
            return publish(
                sessions,
                store,
                principal,
                self.namespace,
                self.name,
                self.files,
                AdapterMeta(),
                embedder,
                title=self.title,
                message=self.message,
            )
        finally:
            self.discard(store)  # what the version did not take (a file added twice, then deleted...)


def start_commit(
    sessions: sessionmaker[Session], store: BlobStore, principal: Principal, namespace: str, name: str, revision: str
) -> Commit:
    """A commit to `revision` ("main" or the latest revision id: versions are linear) of an adapter the
    caller may write, starting from its latest version's files."""
    check_repo_id(namespace, name)
    with sessions() as session:
        require_write(session, principal, namespace)
        adapter = reads.get_adapter(session, principal, namespace, name)
        parent = adapter.versions[-1] if adapter.versions else None  # one read: a delete may be racing
        if parent and revision not in ("main", parent.revision):
            raise InvalidRequest(
                f"commits go to main; {revision!r} is not the latest revision (Quiver's versions are linear)"
            )
        try:
            files = {f.path: store.reuse(f.sha256, f.size) for f in (parent.files if parent else [])}
        except FileNotFoundError:  # a delete of the parent removed its blobs after it was read
            raise Conflict(
                f"{namespace}/{name}: its latest version was deleted while this commit began; retry"
            ) from None
        return Commit(namespace, name, parent.revision if parent else None, files)
