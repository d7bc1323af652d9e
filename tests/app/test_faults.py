"""The database and the storage failing under an in-process app: bounded
waits, the right problem with Retry-After, nothing left behind."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.testing import QuartClient
from sqlalchemy.exc import DBAPIError

from devtools.form_data import multipart, multipart_headers, part
from devtools.stored import assert_nothing_stored, count_rows
from quart_app.db.engine import Database, database_fault
from quart_app.db.models import User, utc_now
from quart_app.errors import DatabaseUnavailable
from quart_app.state import app_state

TIMEOUT = 0.5


@pytest.fixture
def overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    return {**overrides, "DATABASE_TIMEOUT": TIMEOUT}


@pytest.mark.sqlite_only
async def test_a_write_waits_at_most_the_timeout_for_this_process_write_lock(
    app: Quart, client: QuartClient
) -> None:
    database: Database = app_state(app).database
    async with database.write_lock:  # a writer that never finishes
        started = time.monotonic()
        response = await client.post("/users", json={"name": "A", "email": "a@example.com"})
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert (await response.get_json())["type"] == "urn:quart-app:problem:database-unavailable"
    assert int(response.headers["Retry-After"]) > 0
    assert TIMEOUT <= elapsed < TIMEOUT + 0.5
    assert await count_rows(app, User) == 0
    created = await client.post("/users", json={"name": "A", "email": "a@example.com"})
    assert created.status_code == 201


@pytest.mark.sqlite_only
async def test_a_commit_into_a_file_deleted_meanwhile_is_not_acknowledged(app: Quart) -> None:
    """The file goes between BEGIN and COMMIT: the commit lands in the
    deleted file, so the write must fail rather than report success."""
    database: Database = app_state(app).database
    assert database.path is not None
    with pytest.raises(DatabaseUnavailable):
        async with database.sessionmaker() as session, database.writing(session):
            session.add(User(name="A", email="a@example.com", created_at=utc_now()))
            await session.flush()
            database.path.unlink()
    assert not database.path.exists()  # and no empty database in its place
    # The pool does not write to the deleted file either: it opens the path
    # again, which fails while nothing is there.
    with pytest.raises(DBAPIError) as raised:
        await database.probe()
    assert isinstance(database_fault(raised.value), DatabaseUnavailable)


@pytest.mark.local_storage_only
async def test_storage_that_cannot_be_written_is_503_and_leaves_nothing(
    app: Quart, client: QuartClient, overrides: dict[str, Any]
) -> None:
    storage: Path = overrides["STORAGE_DIR"]
    # Root ignores permissions; a file where the temp directory should be
    # stops every write there, as a read-only mount would (tests/e2e/test_faults.py).
    shutil.rmtree(storage / "tmp")
    (storage / "tmp").write_text("not a directory")
    body = multipart(part("file", os.urandom(5000), "a.bin"))
    responses = await asyncio.gather(
        client.post("/files", data=body, headers=multipart_headers()),
        client.put("/files/x", data=os.urandom(5000)),
        client.get("/readyz"),
    )
    for response in responses:
        assert response.status_code == 503
        assert (await response.get_json())["type"] == "urn:quart-app:problem:storage-unavailable"
        assert int(response.headers["Retry-After"]) > 0
    (storage / "tmp").unlink()
    (storage / "tmp").mkdir()
    await assert_nothing_stored(app, storage)
    assert (await client.get("/readyz")).status_code == 200
