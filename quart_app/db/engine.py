"""Engine and sessions: the Database a serving process keeps (opened and
closed by state.AppState), SQLite's pragmas, and how database faults are told
apart.

The database may be unusable for a while (another process holds SQLite's
write lock, its file was deleted, its disk is full or read-only, PostgreSQL is
down). A request then waits at most ``DATABASE_TIMEOUT`` seconds for it and
fails with a DBAPI error that :func:`database_fault` names as a domain error
(503 or 507 at the edge), never hangs and never reports success it did not
have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.engine import Connection, Dialect, ExceptionContext
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from quart_app import metrics
from quart_app.config import Settings
from quart_app.db.commits import CommitsInFlight
from quart_app.db.postgresql import (
    PG_DISK_FULL,
    WRITERS_KEY,
    PoolOptions,
    advisory_key,
    create_server_engine,
    sqlstate_unavailable,
)
from quart_app.errors import DatabaseUnavailable, DomainError, InsufficientStorage

# A write's budget is only re-set on its connection (one more statement) when
# it differs from the connection's busy timeout by more than this: small waits
# on this process's write lock, the usual case under load, cost nothing, and a
# request may overrun its budget by at most this much.
BUSY_SLACK_MS = 100

T = TypeVar("T")

log = logging.getLogger("quart_app.database")


class _Abandoned(Exception):
    """run_write's caller was cancelled before its transaction committed."""


# Keys in a pooled connection's info dict.
_FILE = "quart_app.sqlite_file"  # (st_dev, st_ino) of the file it opened
_BUSY_MS = "quart_app.busy_timeout_ms"
_SYNCHRONOUS = "quart_app.synchronous"  # the connection's PRAGMA synchronous now

# SQLite primary result codes (the low byte of the extended code).
_SQLITE_FULL = 13
_SQLITE_UNAVAILABLE = {
    5,  # SQLITE_BUSY: another connection holds the lock ("database is locked")
    6,  # SQLITE_LOCKED
    8,  # SQLITE_READONLY: the file or its directory is read-only
    10,  # SQLITE_IOERR: "disk I/O error"
    14,  # SQLITE_CANTOPEN: "unable to open database file" (deleted, no permission)
    15,  # SQLITE_PROTOCOL: the locking protocol failed
}
# What the drivers say when the database cannot be used now, for drivers that
# give no result code (PostgreSQL's: refused, reset or closed connections).
_UNAVAILABLE_MESSAGES = (
    "database is locked",
    "unable to open database file",
    "disk i/o error",
    "readonly database",
    "connection refused",
    "could not connect",
    "connection was closed",
    "connection is closed",
    "connection reset",
    "the database system is starting up",
    "the database system is shutting down",
)


def sqlite_path(url: str) -> Path | None:
    """The file an SQLite URL names; None for other databases, in-memory
    ones and ``file:`` URIs (which carry their own open flags)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def database_fault(error: DBAPIError) -> DomainError | None:
    """The domain error a DBAPI error stands for when the database, not the
    request, is at fault; None for anything else (a bug: 500)."""
    original = error.orig
    code = getattr(original, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    sqlstate = str(getattr(original, "sqlstate", None) or "")
    message = str(original).lower()
    if primary == _SQLITE_FULL or sqlstate == PG_DISK_FULL or "database or disk is full" in message:
        return InsufficientStorage("There is no room left in the database.")
    if (
        primary in _SQLITE_UNAVAILABLE
        or sqlstate_unavailable(sqlstate)
        or error.connection_invalidated
        or isinstance(original, OSError)
        or any(text in message for text in _UNAVAILABLE_MESSAGES)
    ):
        return DatabaseUnavailable("The database is not available right now; retry later.")
    return None


def _count_fault(context: ExceptionContext) -> None:
    """Every DBAPI error on the engine, the app's or a background task's: a
    fault of the database (not a conflict a request caused) is counted."""
    error = context.sqlalchemy_exception
    if not isinstance(error, DBAPIError):
        return
    fault = database_fault(error)
    if isinstance(fault, InsufficientStorage):
        metrics.database_error("full")
    elif fault is not None:
        metrics.database_error("unavailable")


class Database:
    """What the app keeps for the database: engine, session factory, and the
    lock that queues this process's write transactions.

    ``timeout`` (seconds) bounds every wait for the database: SQLite's busy
    timeout, the wait for this process's write lock, PostgreSQL's row and
    advisory locks (lock_timeout). ``pool``: PostgreSQL's pool and its
    timeouts (None: SQLAlchemy's and asyncpg's own, for tests).
    """

    def __init__(self, url: str, timeout: float, pool: PoolOptions | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.is_sqlite = url.startswith("sqlite")
        self.path = sqlite_path(url)
        self.engine: AsyncEngine = _create_engine(url, timeout, self.path, pool)
        event.listen(self.engine.sync_engine, "handle_error", _count_fault)
        # run_write's engine on an SQLite file: the same file and pragmas
        # through the stdlib driver, used only on a thread of its own.
        self.thread_engine: Engine | None = None
        self._writer_thread: ThreadPoolExecutor | None = None
        if self.path is not None:
            self.thread_engine = _create_thread_engine(url, timeout, self.path)
            event.listen(self.thread_engine, "handle_error", _count_fault)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time. Writers that wait on SQLite's busy
        # handler sleep with back-off (tens of ms each); queueing them on an
        # asyncio lock instead hands the write lock over the moment it frees.
        self.write_lock = asyncio.Lock()
        # Commits that run to their end whoever hangs up; they end before
        # the engine is disposed.
        self.commits = CommitsInFlight()

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(
            settings.database_url, settings.DATABASE_TIMEOUT, PoolOptions.from_settings(settings)
        )

    def create_file(self) -> bool:
        """Create the SQLite file if there is none (True if it was made). The
        engine itself never creates one: a database deleted while serving
        must not come back empty under the same name."""
        if self.path is None or self.path.exists():
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        return True

    async def dispose(self) -> None:
        try:
            await self.engine.dispose()
        finally:
            writer, self._writer_thread = self._writer_thread, None
            if writer is not None and self.thread_engine is not None:
                try:
                    loop = asyncio.get_running_loop()
                    await loop.run_in_executor(writer, self.thread_engine.dispose)
                finally:
                    writer.shutdown()

    async def _take_write_lock(self, deadline: float) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                await self.write_lock.acquire()
        except TimeoutError:
            metrics.database_error("unavailable")
            raise DatabaseUnavailable(
                f"The database stayed busy for {self.timeout:g} s; retry later."
            ) from None

    @asynccontextmanager
    async def writing(
        self,
        session: AsyncSession,
        since: float | None = None,
        exclusive: bool = False,
        durable: bool = True,
    ) -> AsyncIterator[AsyncSession]:
        """A write transaction: committed when the block ends, rolled back if
        it raises. On SQLite it holds this process's write lock and starts
        with BEGIN IMMEDIATE, so it never fails half-way with "database is
        locked" because another process wrote in between; no other write
        transaction, in any process, runs meanwhile.

        On PostgreSQL write transactions run side by side, in every server;
        what must not interleave takes row locks or :meth:`lock`. Each holds
        the shared side of one advisory lock, whose exclusive side
        ``exclusive=True`` takes (crash recovery, repair): then, as on
        SQLite, no other write transaction is half-way through.

        The wait for SQLite's locks ends ``timeout`` seconds after ``since``
        (a loop time; default now): a group commit passes the time its
        oldest request queued, so no request waits longer than that.
        After the commit, the file must still be the one the path names:
        a write into a deleted or replaced file is not acknowledged.

        ``durable=False`` (SQLite only; a no-op on PostgreSQL): the commit
        does not wait for the WAL's fsync (``synchronous=NORMAL`` for this
        transaction). For a change whose loss in an operating-system crash
        harms nothing because everything that relied on it dies in the same
        crash (an upload's lease: README "Resumable uploads across
        servers"). The next durable commit's fsync covers it, as the WAL is
        written in order;
        a process that dies without the machine loses nothing."""
        if session.in_transaction():
            await session.commit()  # end any read snapshot first

        async def begin(options: dict[str, Any]) -> AsyncConnection:
            return await session.connection(execution_options=options)

        async with self._transaction(
            begin, session.commit, session.rollback, since, exclusive, durable
        ):
            yield session

    @asynccontextmanager
    async def writing_connection(
        self, durable: bool = True, since: float | None = None
    ) -> AsyncIterator[AsyncConnection]:
        """:meth:`writing` for Core statements on a connection of its own,
        without a session: a session's unit of work and identity map cost
        about as much CPU again as the statements themselves, which matters
        on a path taken per request (:meth:`run_write` off SQLite). As with a
        session, the connection is taken from the pool only once the write
        lock is held (a writer queued for it holds no connection)."""
        async with contextlib.AsyncExitStack() as stack:
            opened: list[AsyncConnection] = []

            async def begin(options: dict[str, Any]) -> AsyncConnection:
                connection = await stack.enter_async_context(self.engine.connect())
                opened.append(connection)
                return await connection.execution_options(**options)

            async def commit() -> None:
                await opened[0].commit()

            async def rollback() -> None:
                if opened:
                    await opened[0].rollback()

            async with self._transaction(
                begin, commit, rollback, since, False, durable
            ) as connection:
                yield connection

    async def run_write(
        self, work: Callable[[Connection], T], durable: bool = True, since: float | None = None
    ) -> T:
        """A write transaction of Core statements: ``work(connection)``, on a
        sync Connection, committed when it returns and rolled back if it
        raises; what it returns. Under this process's write lock, with the
        file checked after the commit, as :meth:`writing`.

        On an SQLite file the whole transaction, from BEGIN IMMEDIATE to
        COMMIT, is one trip to a thread of the database's own (the stdlib
        driver on the same file, with the same pragmas). Through aiosqlite
        every statement is a trip of its own to its thread and back, three
        or four with its cursor, and so is each pragma and the BEGIN: about
        fifteen per transaction, each a wake-up of the event loop. Elsewhere
        (PostgreSQL) ``work`` runs on :meth:`writing_connection`.

        ``work`` runs off the event loop: it must not touch asyncio or
        anything of the request's. A caller cancelled while ``work`` runs
        gets its transaction rolled back, as on the other path, unless it
        had already reached its COMMIT; either way it ends before the write
        lock is let go. ``since``: see :meth:`writing`."""
        if self.thread_engine is None:
            async with self.writing_connection(durable, since) as connection:
                return await connection.run_sync(work)
        engine = self.thread_engine
        if self._writer_thread is None:
            self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        writer = self._writer_thread
        abandoned = threading.Event()
        loop = asyncio.get_running_loop()
        deadline = (loop.time() if since is None else since) + self.timeout
        await self._take_write_lock(deadline)
        options = {
            "sqlite_begin": "IMMEDIATE",
            "sqlite_busy_ms": max(0, round((deadline - loop.time()) * 1000)),
            "sqlite_synchronous": "FULL" if durable else "NORMAL",
        }

        def transaction() -> tuple[T, Any]:
            with engine.connect() as connection:
                connection.execution_options(**options)
                with connection.begin():
                    outcome = work(connection)
                    if abandoned.is_set():
                        raise _Abandoned  # rolled back: nobody waits for it
                return outcome, connection.info.get(_FILE)

        running: asyncio.Future[tuple[T, Any]] | None = None
        try:
            running = loop.run_in_executor(writer, transaction)
            outcome, committed_to = await asyncio.shield(running)
        except asyncio.CancelledError:
            abandoned.set()
            raise
        finally:
            if running is None or running.done():
                self.write_lock.release()
            else:
                running.add_done_callback(self._release_write_lock)
        self._check_still_the_file(committed_to)
        return outcome

    def _release_write_lock(self, ended: asyncio.Future[Any]) -> None:
        """A transaction's thread ended after its caller was cancelled."""
        if not ended.cancelled():
            error = ended.exception()  # retrieved: nobody awaits it any more
            if error is not None and not isinstance(error, _Abandoned):
                log.warning("a cancelled caller's write failed: %r", error)
        self.write_lock.release()

    def _check_still_the_file(self, committed_to: Any) -> None:
        if self.path is not None and _file_identity(self.path) != committed_to:
            metrics.database_error("unavailable")
            raise DatabaseUnavailable(
                "The database file was removed or replaced; the change was not kept."
            )

    @asynccontextmanager
    async def _transaction(
        self,
        begin: Callable[[dict[str, Any]], Awaitable[AsyncConnection]],
        commit: Callable[[], Awaitable[None]],
        rollback: Callable[[], Awaitable[None]],
        since: float | None,
        exclusive: bool,
        durable: bool,
    ) -> AsyncIterator[AsyncConnection]:
        """The body of :meth:`writing`, for a session or a connection:
        ``begin`` gets the connection, with the given execution options, once
        the write lock is held (what it returns is yielded); ``commit`` and
        ``rollback`` end the transaction."""
        if not self.is_sqlite:
            lock = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
            connection = await begin({})
            await connection.execute(text(f"SELECT {lock}({WRITERS_KEY})"))
            try:
                yield connection
            except BaseException:
                await rollback()
                raise
            await commit()
            return
        loop = asyncio.get_running_loop()
        deadline = (loop.time() if since is None else since) + self.timeout
        await self._take_write_lock(deadline)
        try:
            busy_ms = max(0, round((deadline - loop.time()) * 1000))
            connection = await begin(
                {
                    "sqlite_begin": "IMMEDIATE",
                    "sqlite_busy_ms": busy_ms,
                    "sqlite_synchronous": "FULL" if durable else "NORMAL",
                }
            )
            committed_to = connection.info.get(_FILE)
            try:
                yield connection
            except BaseException:
                await rollback()
                raise
            await commit()
        finally:
            self.write_lock.release()
        self._check_still_the_file(committed_to)

    async def lock(self, session: AsyncSession, names: Iterable[str]) -> None:
        """Inside :meth:`writing`: wait until no other write transaction holds
        any of ``names`` (``blob:<sha256>``, ``file:<id>``), and hold them
        until this one ends, across servers. Taken in one statement in key
        order, so two transactions locking overlapping names never deadlock.
        On SQLite a write transaction already excludes every other."""
        keys = sorted({advisory_key(name) for name in names})
        if self.is_sqlite or not keys:
            return
        await session.execute(
            text(
                "SELECT pg_advisory_xact_lock(k) FROM "
                "(SELECT unnest(CAST(:keys AS bigint[])) AS k ORDER BY 1) AS ordered"
            ),
            {"keys": keys},
        )

    async def probe(self) -> None:
        """Raises unless this process could write now (readiness): on SQLite
        a write transaction begun and ended within the timeout, on the file
        the path still names; on PostgreSQL a query on a server that takes
        writes (not a standby)."""
        async with self.sessionmaker() as session:
            if self.is_sqlite:
                async with self.writing(session):
                    pass
            elif await session.scalar(text("SELECT pg_is_in_recovery()")):
                raise DatabaseUnavailable("The database is a read-only standby.")


def _create_engine(
    url: str, timeout: float, path: Path | None, pool: PoolOptions | None
) -> AsyncEngine:
    if not url.startswith("sqlite"):
        return create_server_engine(url, timeout, pool)
    # isolation_level=None: the driver does no implicit BEGIN; the "begin"
    # listener below emits it, so SQLAlchemy's transactions are real ones and
    # a writer can ask for BEGIN IMMEDIATE.
    engine = create_async_engine(url, connect_args={"isolation_level": None, "timeout": timeout})
    _sqlite_events(engine.sync_engine, timeout, path)
    return engine


def _create_thread_engine(url: str, timeout: float, path: Path) -> Engine:
    """Database.run_write's engine: the stdlib driver on the same file, one
    connection, used by one thread at a time (check_same_thread off only so
    that it may be closed from another)."""
    engine = create_engine(
        make_url(url).set(drivername="sqlite+pysqlite"),
        connect_args={"isolation_level": None, "timeout": timeout, "check_same_thread": False},
        pool_size=1,
        max_overflow=0,
    )
    _sqlite_events(engine, timeout, path)
    return engine


def _sqlite_events(engine: Engine, timeout: float, path: Path | None) -> None:
    timeout_ms = round(timeout * 1000)

    if path is not None:

        @event.listens_for(engine, "do_connect")
        def _open_existing_only(
            dialect: Dialect, record: ConnectionPoolEntry, cargs: list[Any], cparams: dict[str, Any]
        ) -> None:
            # mode=rw: never create the file. Deleted while serving, it must
            # fail ("unable to open database file"), not start over empty.
            cargs[0] = f"file:{urllib.parse.quote(str(path))}?mode=rw"
            cparams["uri"] = True

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if path is not None:
            record.info[_FILE] = _file_identity(path)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: a commit reaches the disk before a 201 is sent, like the blobs.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()
        record.info[_BUSY_MS] = timeout_ms
        record.info[_SYNCHRONOUS] = "FULL"

    if path is not None:

        @event.listens_for(engine, "checkout")
        def _still_the_file(
            dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
        ) -> None:
            # A connection keeps writing to the file it opened, even once that
            # file is deleted or replaced: acknowledged writes would vanish at
            # the next restart. The pool drops such a connection and opens
            # whatever the path names now (or fails: 503).
            if _file_identity(path) != record.info.get(_FILE):
                raise DisconnectionError("the database file was removed or replaced")

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        busy_ms = options.get("sqlite_busy_ms", timeout_ms)
        if abs(busy_ms - conn.info.get(_BUSY_MS, timeout_ms)) > BUSY_SLACK_MS:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={busy_ms}")
            conn.info[_BUSY_MS] = busy_ms
        # Every transaction but one that asks otherwise (Database.writing's
        # durable=False) commits with the WAL fsynced; set outside it.
        synchronous = options.get("sqlite_synchronous", "FULL")
        if conn.info.get(_SYNCHRONOUS) != synchronous:
            conn.exec_driver_sql(f"PRAGMA synchronous={synchronous}")
            conn.info[_SYNCHRONOUS] = synchronous
        mode = options.get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")
