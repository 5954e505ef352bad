"""The schema, as SQLAlchemy 2.x models. It changes only through migrations/ (Alembic)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timestamp stored with its zone and always read back as aware UTC (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}


class Namespace(Base):
    """A user or an organisation: the first half of `namespace/name`."""

    __tablename__ = "namespaces"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(96), unique=True)
    kind: Mapped[str] = mapped_column(String(8))  # "user" | "org"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # a disabled user's tokens are refused


class Membership(Base):
    """A user belongs to an organisation, with a role: admin, write or read (registry.accounts.access.ROLES)."""

    __tablename__ = "memberships"
    org_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(8), default="write")

    user: Mapped[Namespace] = relationship(foreign_keys=[user_id])


class Token(Base):
    """A bearer token; only its sha256 is stored (and `hint`, its first characters, to recognise it)."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(8))  # "read" | "write"
    name: Mapped[str] = mapped_column(String(64), default="")
    hint: Mapped[str] = mapped_column(String(16), default="")
    namespaces: Mapped[list[str] | None] = mapped_column(JSON)  # limited to these (None: all of the user's)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[Namespace] = relationship(lazy="joined")


class WebSession(Base):
    """A signed-in browser (registry/accounts/sessions.py). Its cookie holds only a random id, stored here as
    its sha256; the row names the token the user signed in with (never the token itself) and the form
    (CSRF) secret. Signing out ends the row; revoking the token ends every session made with it."""

    __tablename__ = "web_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AdapterRepo(Base):
    """A named adapter (`namespace/name`) and its metadata; its files are in its versions. The client's
    `quiver_hub.Adapter` is something else: one version's PEFT folder loaded in memory."""

    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("namespace_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(96))
    base_model: Mapped[str] = mapped_column(String(255), index=True)
    task: Mapped[str | None] = mapped_column(String(255), index=True)
    tags: Mapped[list[str]] = mapped_column(default=list)
    description: Mapped[str] = mapped_column(Text, default="")
    license: Mapped[str | None] = mapped_column(String(64))
    visibility: Mapped[str] = mapped_column(String(8), default="public")  # "public" | "private"
    # MiniLM embedding (float32 bytes) of description, task, tags and card: what text search ranks.
    text_embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Highest version number ever given: numbers are never reused, even after a delete.
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    namespace: Mapped[Namespace] = relationship(lazy="joined")
    versions: Mapped[list[Version]] = relationship(
        back_populates="adapter", order_by="Version.number", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def repo_id(self) -> str:
        return f"{self.namespace.name}/{self.name}"


class RetiredName(Base):
    """A name that held an adapter which was deleted (or moved): its version numbers are never given
    again, so `ns/name@3` means one thing for ever; `moved_to` names the adapter it became."""

    __tablename__ = "retired_names"
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(96), primary_key=True)
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    moved_to: Mapped[int | None] = mapped_column(ForeignKey("adapters.id", ondelete="SET NULL"))
    retired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BaseModelModule(Base):
    """The shape of one module of a base model, as its public adapters agree on it: an upload whose
    factors do not fit is refused (instead of poisoning everyone's routing)."""

    __tablename__ = "base_model_modules"
    base_model: Mapped[str] = mapped_column(String(255), primary_key=True)
    module: Mapped[str] = mapped_column(String(255), primary_key=True)
    in_features: Mapped[int] = mapped_column(Integer)
    out_features: Mapped[int] = mapped_column(Integer)


class Version(Base):
    """One immutable publish of an adapter."""

    __tablename__ = "versions"
    # Not stored: what the publish that made this version told its publisher (registry.catalogue.publishing.publish).
    notices: tuple[str, ...] | list[str] = ()
    __table_args__ = (UniqueConstraint("adapter_id", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    revision: Mapped[str] = mapped_column(String(40), unique=True)
    adapter_config: Mapped[dict[str, Any]]
    base_model: Mapped[str] = mapped_column(String(255))
    rank: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float] = mapped_column(Float)
    target_modules: Mapped[list[str]]
    num_parameters: Mapped[int] = mapped_column(BigInteger)
    total_size: Mapped[int] = mapped_column(BigInteger)
    published_by_id: Mapped[int | None] = mapped_column(ForeignKey("namespaces.id", ondelete="SET NULL"))
    # Lineage of a derived adapter (a cluster adapter): {"run", "method", "rank", "versions": [...]}.
    derived_from: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The commit that made it, as Hugging Face clients list it (a /v1 publish gets a title of its own).
    title: Mapped[str] = mapped_column(String(255), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    adapter: Mapped[AdapterRepo] = relationship(back_populates="versions")
    published_by: Mapped[Namespace | None] = relationship(lazy="joined")
    files: Mapped[list[File]] = relationship(
        order_by="File.path", cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )
    prototypes: Mapped[list[Prototype]] = relationship(
        order_by="Prototype.module", cascade="all, delete-orphan", passive_deletes=True
    )
    embeddings: Mapped[list[Embedding]] = relationship(cascade="all, delete-orphan", passive_deletes=True)
    tags: Mapped[list[Tag]] = relationship(viewonly=True, order_by="Tag.name", lazy="selectin")

    def file(self, path: str) -> File | None:
        """The version's file at `path`, if it has one."""
        return next((f for f in self.files if f.path == path), None)


class Tag(Base):
    """A name for one version of an adapter (`v1.0`), usable wherever a revision is."""

    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("adapter_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    version: Mapped[Version] = relationship(lazy="joined", viewonly=True)


class Blob(Base):
    """A stored file's content, by sha256 (the blob store's key)."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class File(Base):
    """A file of a version: its path in the adapter folder and the blob holding its bytes."""

    __tablename__ = "files"
    __table_args__ = (UniqueConstraint("version_id", "path"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    # The file's git object id as the Hugging Face Hub lists it (registry.catalogue.files.git_oid): the blob SHA-1
    # of its bytes, or of its LFS pointer for weights. None for files stored before it was kept.
    oid: Mapped[str | None] = mapped_column(String(40))


class Prototype(Base):
    """The Arrow prototype of one adapted module of a version: unit vector in input space (float32
    bytes) and the top singular value of the scaled delta."""

    __tablename__ = "prototypes"
    __table_args__ = (UniqueConstraint("version_id", "module"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    module: Mapped[str] = mapped_column(String(255))
    in_features: Mapped[int] = mapped_column(Integer)
    sigma: Mapped[float] = mapped_column(Float)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class Embedding(Base):
    """A float32 embedding of a version: "outputs" (output sketch, MBC's default), "sketch" (delta
    sketch, MBC) or "examples" (mean MiniLM embedding of examples.jsonl)."""

    __tablename__ = "embeddings"
    __table_args__ = (UniqueConstraint("version_id", "kind"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class Change(Base):
    """The change sequence: one row per publish, edit or delete, so every hub process sharing the
    database can bring its derived indexes up to date. Rows are appended in commit order."""

    __tablename__ = "changes"
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    adapter_id: Mapped[int] = mapped_column(Integer, index=True)  # no foreign key: the adapter may be gone
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEvent(Base):
    """One write, recorded in the transaction that made it: who, what, when, from where. Names are kept
    as text too, so an event still reads right after a rename or a delete."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_id: Mapped[int | None] = mapped_column(Integer, index=True)
    actor: Mapped[str] = mapped_column(String(96))  # a user name, or "operator" for quiver admin commands
    action: Mapped[str] = mapped_column(String(32))
    namespace_id: Mapped[int | None] = mapped_column(Integer, index=True)  # whose event it is
    namespace: Mapped[str] = mapped_column(String(96))
    target: Mapped[str] = mapped_column(String(255))
    details: Mapped[dict[str, Any]]
    address: Mapped[str | None] = mapped_column(String(64))


class ClusterRun(Base):
    """One MBC run over the adapters its caller could see. `clusters` is the result, a record of that
    moment: [{"index", "members": [{"id", "version", "revision", "task", "distance"}]}]."""

    __tablename__ = "cluster_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"), index=True)
    base_model: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(16))
    requested_k: Mapped[int | None] = mapped_column(Integer)
    k: Mapped[int | None] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict[str, Any]]  # filters and method options
    status: Mapped[str] = mapped_column(String(8))  # "running" | "done" | "failed"
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    silhouette: Mapped[float | None] = mapped_column(Float)
    clusters: Mapped[list[Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
