"""Typed SQLAlchemy 2 models. Constraint names come from one naming convention
so that Alembic migrations stay stable across databases."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)


class File(Base):
    __tablename__ = "files"
    __table_args__ = {"sqlite_autoincrement": True}

    # seq orders the list (keyset paging); id is the public, unguessable name.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(128), unique=True)
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


class IdempotencyRecord(Base):
    """An Idempotency-Key and what its first request answered.

    While the first request runs the row holds a lock (``lock_token`` until
    ``locked_until``); when it succeeds, the response is stored in the same
    transaction as the resource it created."""

    __tablename__ = "idempotency_records"

    # The client identity keys belong to (one anonymous identity until
    # authentication arrives) and the key itself.
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
