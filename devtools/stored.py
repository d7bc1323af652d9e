"""What an app or a running server left behind: rows, blobs, temp files."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

from quart import Quart
from sqlalchemy import func, select

from quart_app.db.models import Base, Blob, File, QuotaReservation, User
from quart_app.services.accounts import OPERATOR_EMAIL
from quart_app.state import app_state

from .server import RunningServer


async def count_rows(app: Quart, model: type[Base]) -> int:
    """Rows of ``model``; for users, not counting the operator account (made
    at startup when an admin key is configured, as every test app has)."""
    query = select(func.count()).select_from(model)
    if model is User:
        query = query.where(User.email != OPERATOR_EMAIL)
    async with app_state(app).database.sessionmaker() as session:
        return int(await session.scalar(query) or 0)


async def database_rows(app: Quart) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, in a stable order: compare two of these to
    show that a request stored or changed nothing in the database."""
    tables = {}
    async with app_state(app).database.sessionmaker() as session:
        for table in Base.metadata.sorted_tables:
            result = await session.execute(select(table).order_by(*table.primary_key.columns))
            tables[table.name] = [tuple(row) for row in result]
    return tables


def storage_files(storage: Path) -> dict[str, int]:
    """Every file under the storage directory, with its size."""
    return {
        str(path.relative_to(storage)): path.stat().st_size
        for path in sorted(storage.rglob("*"))
        if path.is_file()
    }


async def everything_held(app: Quart, storage: Path) -> dict[str, object]:
    """What the app holds: every row and every stored file. Equal before and
    after a request: it stored, changed and removed nothing."""
    return {"rows": await database_rows(app), "files": storage_files(storage)}


def blob_files(storage: Path) -> list[Path]:
    return [p for p in (storage / "blobs").rglob("*") if p.is_file()]


def temp_files(storage: Path) -> list[Path]:
    return [p for d in ("tmp", "trash") for p in (storage / d).iterdir()]


async def assert_nothing_stored(app: Quart, storage: Path) -> None:
    assert await count_rows(app, File) == 0
    assert await count_rows(app, Blob) == 0
    assert await count_rows(app, QuotaReservation) == 0
    assert blob_files(storage) == []
    assert temp_files(storage) == []


def _count(db: sqlite3.Connection, table: str) -> int:
    """Rows of ``table``; for users, not counting the operator account (made
    at startup when an admin key is configured, as every test server has)."""
    if table == "users":
        query = "SELECT count(*) FROM users WHERE email != ?"
        count: int = db.execute(query, (OPERATOR_EMAIL,)).fetchone()[0]
    else:
        count = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return count


def rows(server: RunningServer, table: str) -> int:
    """Rows in a table of a running server's database, read beside it (for
    users, without the operator account)."""
    with closing(sqlite3.connect(server.database_path)) as db:
        return _count(db, table)


TABLES = (
    "users",
    "files",
    "blobs",
    "batches",
    "uploads",
    "idempotency_records",
    "quota_reservations",
)


def server_holds(server: RunningServer) -> dict[str, object]:
    """Everything the server holds: row counts (users without the operator
    account) and files under storage."""
    with closing(sqlite3.connect(f"file:{server.database_path}?mode=ro", uri=True)) as db:
        rows = {t: _count(db, t) for t in TABLES}
    files = sorted(
        str(p.relative_to(server.storage_dir)) for p in server.storage_dir.rglob("*") if p.is_file()
    )
    return {"rows": {t: n for t, n in rows.items() if n}, "files": files}


def assert_server_holds(server: RunningServer, before: object, timeout: float = 10.0) -> None:
    """Nothing may be left once the server is done with the request (its
    cleanup can finish just after the client has its answer). Compared with
    what was there before, so that a failing case fails alone."""
    deadline = time.monotonic() + timeout
    while (left := server_holds(server)) != before:
        assert time.monotonic() < deadline, f"left behind: {left}, before: {before}"
        time.sleep(0.05)
