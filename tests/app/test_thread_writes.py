"""Database.run_write: a write transaction of Core statements, on an SQLite
file run whole (BEGIN IMMEDIATE to COMMIT) on a thread of the database's
own, elsewhere on a connection of its own. Committed or rolled back whole,
under this process's write lock, and never acknowledged into a file that
was deleted meanwhile."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from typing import Any

import pytest
from quart import Quart
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from devtools.stored import count_rows
from quart_app.db.engine import Database, database_fault
from quart_app.db.models import User, utc_now
from quart_app.errors import DatabaseUnavailable
from quart_app.state import app_state

pytestmark = pytest.mark.postgresql

TIMEOUT = 0.5


@pytest.fixture
def overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    return {**overrides, "DATABASE_TIMEOUT": TIMEOUT}


def add_user(name: str) -> Any:
    def work(connection: Connection) -> int:
        connection.execute(
            insert(User).values(name=name, email=f"{name}@example.com", created_at=utc_now())
        )
        counted = select(func.count()).select_from(User).where(User.email.like("%@example.com"))
        return int(connection.scalar(counted) or 0)

    return work


async def test_what_the_work_returns_is_committed(app: Quart) -> None:
    database: Database = app_state(app).database
    assert await database.run_write(add_user("a")) == 1
    assert await database.run_write(add_user("b"), durable=False) == 2
    assert await count_rows(app, User) == 2
    if database.is_sqlite:
        # Off the event loop: on the database's own thread.
        names: list[str] = []
        await database.run_write(lambda _: names.append(threading.current_thread().name))
        assert names[0].startswith("sqlite-writer")


async def test_work_that_raises_leaves_nothing(app: Quart) -> None:
    database: Database = app_state(app).database

    def half_then_fail(connection: Connection) -> None:
        add_user("a")(connection)
        raise ValueError("the second half failed")

    with pytest.raises(ValueError):
        await database.run_write(half_then_fail)
    await database.run_write(add_user("b"))
    with pytest.raises(IntegrityError):  # the same email twice: the database refuses
        await database.run_write(add_user("b"))
    assert await count_rows(app, User) == 1


@pytest.mark.sqlite_only
async def test_a_cancelled_callers_transaction_is_rolled_back_under_the_lock(
    app: Quart,
) -> None:
    """The caller goes while the thread runs its work: the transaction is
    rolled back, as on a connection of the event loop (a lease taken for a
    client that left must not stay held), and the write lock is let go only
    after it has ended, so no other writer of this process starts meanwhile."""
    database: Database = app_state(app).database
    entered, go_on = threading.Event(), threading.Event()

    def slow(connection: Connection) -> None:
        add_user("slow")(connection)
        entered.set()
        go_on.wait(5)

    writing = asyncio.ensure_future(database.run_write(slow))
    assert await asyncio.to_thread(entered.wait, 5)
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    assert database.write_lock.locked()
    go_on.set()
    assert await database.run_write(add_user("next")) == 1  # after the lock; alone
    assert await count_rows(app, User) == 1


@pytest.mark.sqlite_only
async def test_another_process_holding_the_write_lock_is_a_503_after_the_timeout(
    app: Quart,
) -> None:
    """SQLite's busy timeout on the thread's connection is what is left of
    the deadline, and a lock held past it is DatabaseUnavailable at the edge,
    as on the event loop's connections."""
    database: Database = app_state(app).database
    assert database.path is not None
    other = sqlite3.connect(database.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(DBAPIError) as raised:
            await database.run_write(add_user("a"))
        assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 2
        assert isinstance(database_fault(raised.value), DatabaseUnavailable)
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert await database.run_write(add_user("b")) == 1


@pytest.mark.sqlite_only
async def test_a_write_waits_at_most_the_timeout_for_the_write_lock(app: Quart) -> None:
    database: Database = app_state(app).database
    async with database.write_lock:  # a writer that never finishes
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            await database.run_write(add_user("a"))
        assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 2
    assert await count_rows(app, User) == 0


@pytest.mark.sqlite_only
async def test_a_commit_into_a_file_deleted_meanwhile_is_not_acknowledged(app: Quart) -> None:
    database: Database = app_state(app).database
    assert database.path is not None
    await database.run_write(add_user("a"))  # the thread's connection is open

    def delete_then_write(connection: Connection) -> None:
        assert database.path is not None
        database.path.unlink()
        add_user("b")(connection)

    with pytest.raises(DatabaseUnavailable):
        await database.run_write(delete_then_write)
    assert not database.path.exists()  # and no empty database in its place
    # The thread's connection is not used on the deleted file again: the
    # path is opened afresh, which fails while nothing is there (503 at the
    # edge).
    with pytest.raises(DBAPIError) as raised:
        await database.run_write(lambda connection: connection.execute(text("SELECT 1")))
    assert isinstance(database_fault(raised.value), DatabaseUnavailable)
