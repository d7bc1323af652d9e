"""Typed SQLAlchemy 2 models. Constraint names come from one naming convention
so that Alembic migrations stay stable across databases."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect, Row
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_now() -> datetime:
    """Now in UTC, whole seconds: what the API shows is what is stored."""
    return datetime.now(UTC).replace(microsecond=0)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC (SQLite has no time zones); always returns aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"
    # AUTOINCREMENT: ids are never reused, so a cursor position stays valid.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # Stored lowercase; the unique constraint is what makes "taken" race-free.
    email: Mapped[str] = mapped_column(String(254), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    # Limits an admin set for this user (0: unlimited); None: the configured
    # default (services/quotas.py).
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger)
    quota_files: Mapped[int | None] = mapped_column(BigInteger)


class ApiKey(Base):
    """An API key of a user. The secret is never stored: ``secret_hash`` is
    its sha256 (the secret carries 256 random bits, so a fast hash is
    enough), ``prefix`` its first characters, to recognise it in a list."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(64))  # space-separated
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class QuotaReservation(Base):
    """Room in an owner's quota held for an upload in flight: counted as
    used until the transaction that stores its files deletes it, the upload
    fails and removes it, or it expires (services/quotas.py)."""

    __tablename__ = "quota_reservations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Blob(Base):
    """Stored bytes, by content address; shared by every file with that content."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    # The bytes of a small blob, kept here instead of in a file (committed
    # with the row: storage/__init__.py); None when they are in the store.
    # Deferred: only a download or a check reads them, by an explicit select.
    content: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)


class Batch(Base):
    """Files created together by one multipart request."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)


class File(Base):
    __tablename__ = "files"
    # A file's id is unique per owner: a client choosing an id with PUT can
    # learn nothing about other owners' ids.
    __table_args__ = (
        UniqueConstraint("owner_id", "id", name="uq_files_owner_id_id"),
        {"sqlite_autoincrement": True},
    )

    # seq orders the list (keyset paging); id is the public, unguessable name.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(128), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)


class Upload(Base):
    """A resumable (tus) upload. Its bytes live in the store's partial area
    until the last one arrives; then the file with the same id is created."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    # None while the client defers the length (Upload-Defer-Length: 1).
    length: Mapped[int | None] = mapped_column(BigInteger)
    # Bytes durably received and acknowledged.
    offset: Mapped[int] = mapped_column("received", BigInteger, default=0)
    upload_metadata: Mapped[str | None] = mapped_column(Text)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sha256: Mapped[str | None] = mapped_column(String(64))
    # The lease of the request writing to it (services/upload_leases.py):
    # who holds it, until when, and the fencing token, raised by every
    # lease taken; an offset is committed only under the token it was
    # written under. No lease: owner and expiry None.
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_token: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IdempotencyRecord(Base):
    """An Idempotency-Key and what its first request answered.

    While the first request runs the row holds a lock (``lock_token`` until
    ``locked_until``); when it succeeds, the response is stored in the same
    transaction as the resource it created."""

    __tablename__ = "idempotency_records"

    # The owner the key belongs to (a user id, as text) and the key itself:
    # two owners may use the same key independently.
    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    lock_token: Mapped[str | None] = mapped_column(String(64))
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[int | None] = mapped_column(Integer)
    headers: Mapped[str | None] = mapped_column(Text)  # JSON [[name, value], ...]
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ImportJob(Base):
    """An archive import: queued, claimed by a worker with a lease, finished
    once. ``fence`` grows by one at every claim; a worker's writes name the
    fence it claimed with, so one whose lease was taken over writes nothing."""

    __tablename__ = "import_jobs"
    __table_args__ = {"sqlite_autoincrement": True}

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(128), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    archive_format: Mapped[str] = mapped_column(String(16))
    archive_size: Mapped[int] = mapped_column(BigInteger)
    # The archive's blob until the job ends (then released: README "Imports").
    archive_sha256: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    fence: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    entries_done: Mapped[int] = mapped_column(Integer, default=0)
    entries_total: Mapped[int | None] = mapped_column(Integer)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"))
    problem: Mapped[str | None] = mapped_column(Text)  # JSON: an RFC 9457 document
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)


class DownloadLink(Base):
    """A signed download link: a URL that serves a file's content without an
    API key until ``expires_at`` or until it is revoked.

    The URL carries ``<id>.<secret>``. The secret (256 random bits) is never
    stored: ``secret_hash`` is its sha256, as for API keys. The link names
    the file's row (``seq``, never reused), not its id: it serves whatever
    that row holds now (a PUT replacing the file changes what it serves, and
    its ETag), and dies with the row (ON DELETE CASCADE; a later file made
    under the same id is a new row the link does not reach)."""

    # The cascade also fires when a migration rebuilds ``files`` on SQLite
    # (Alembic's batch mode copies it, DROPs it, renames the copy; foreign
    # keys are on): every link would be deleted, i.e. revoked. Safe, but a
    # migration that rebuilds ``files`` should copy ``download_links`` aside
    # and back if links are to survive it.
    __tablename__ = "download_links"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    file_seq: Mapped[int] = mapped_column(ForeignKey("files.seq", ondelete="CASCADE"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    # Indexed: the sweep deletes rows past it.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


def upload_from_row(row: Row[Any]) -> Upload:
    """A transient Upload from a Core row of all its table's columns (an
    UPDATE ... RETURNING in Database.run_write, which has no session to
    load one)."""
    mapping = row._mapping
    return Upload(**{key: mapping[column] for key, column in _UPLOAD_KEYS})


# Upload's table, for Core statements (Upload.__table__ is typed as any FromClause).
UPLOADS: Table = Upload.__table__  # type: ignore[assignment]
# Each column of the table with the attribute it is mapped to.
_UPLOAD_KEYS = tuple(
    (Upload.__mapper__.get_property_by_column(column).key, column) for column in UPLOADS.c
)
