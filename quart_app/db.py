"""Engine and sessions: created in before_serving, disposed in after_serving,
one AsyncSession per request (on ``g``), closed when the request ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from quart import Quart, current_app, g
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from .config import Settings
from .schema_version import schema_at_head
from .shielded import wait_running

# Seconds SQLite waits on another process's write lock before SQLITE_BUSY.
SQLITE_BUSY_TIMEOUT_MS = 10_000


class Database:
    """What the app keeps for the database: engine, session factory, and the
    lock that queues this process's write transactions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine: AsyncEngine = _create_engine(url)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time. Writers that wait on SQLite's busy
        # handler sleep with back-off (tens of ms each); queueing them on an
        # asyncio lock instead hands the write lock over the moment it frees.
        self.write_lock = asyncio.Lock()

    async def dispose(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def writing(self, session: AsyncSession) -> AsyncIterator[AsyncSession]:
        """A write transaction: committed when the block ends, rolled back if
        it raises. On SQLite it holds this process's write lock and starts
        with BEGIN IMMEDIATE, so it never fails half-way with "database is
        locked" because another process wrote in between."""
        if session.in_transaction():
            await session.commit()  # end any read snapshot first
        if not self.is_sqlite:
            async with session.begin():
                yield session
            return
        async with self.write_lock:
            await session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
            try:
                yield session
            except BaseException:
                await session.rollback()
                raise
            await session.commit()


def _create_engine(url: str) -> AsyncEngine:
    if not url.startswith("sqlite"):
        return create_async_engine(url, pool_pre_ping=True)
    # isolation_level=None: the driver does no implicit BEGIN; the "begin"
    # listener below emits it, so SQLAlchemy's transactions are real ones and
    # a writer can ask for BEGIN IMMEDIATE.
    engine = create_async_engine(url, connect_args={"isolation_level": None})

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: a commit reaches the disk before a 201 is sent, like the blobs.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _sqlite_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def init_app(app: Quart, settings: Settings) -> None:
    @app.before_serving
    async def _open_database() -> None:
        database = Database(settings.database_url)
        if settings.AUTO_MIGRATE and not await schema_at_head(database.engine):
            from .migrate import upgrade_to_head

            await upgrade_to_head(database.engine, settings)
        app.extensions["database"] = database

    @app.after_serving
    async def _close_database() -> None:
        await wait_running()  # commits and group commits still writing
        database = app.extensions.pop("database", None)
        if database is not None:
            await database.dispose()

    @app.teardown_appcontext
    async def _close_session(_: BaseException | None) -> None:
        session: AsyncSession | None = g.pop("db_session", None)
        if session is not None:
            await session.close()


def get_database() -> Database:
    database: Database = current_app.extensions["database"]
    return database


def get_session() -> AsyncSession:
    """The request's session, created on first use."""
    if "db_session" not in g:
        g.db_session = get_database().sessionmaker()
    session: AsyncSession = g.db_session
    return session


@asynccontextmanager
async def writing() -> AsyncIterator[AsyncSession]:
    """A write transaction on the request's session (see Database.writing)."""
    async with get_database().writing(get_session()) as session:
        yield session


async def ping(database: Database) -> None:
    async with database.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
