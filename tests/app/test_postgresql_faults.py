"""PostgreSQL failing under an in-process app: a lock held elsewhere past
QUART_APP_DATABASE_TIMEOUT, a pool with every connection in use, a server
that is gone. Each is the 503 problem with Retry-After that SQLite's faults
give (tests/app/test_faults.py), never a 500 and never a hang."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from quart import Quart, Response

from devtools.app_settings import temp_app_settings
from devtools.ports import free_port
from devtools.quart_client import as_quart_client
from devtools.stored import count_rows
from quart_app import create_app
from quart_app.config import load_settings
from quart_app.db.models import User
from quart_app.ops.opening import open_database
from quart_app.ops.startup import StartupError
from quart_app.state import app_state

TIMEOUT = 0.5


@pytest.fixture
def pg_overrides(tmp_path: Path, postgres_url: str) -> dict[str, Any]:
    return {
        **temp_app_settings(tmp_path),
        "DATABASE_URL": postgres_url,
        "DATABASE_TIMEOUT": TIMEOUT,
        "DATABASE_POOL_TIMEOUT": TIMEOUT,
    }


@pytest.fixture
async def pg_app(pg_overrides: dict[str, Any]) -> AsyncIterator[Quart]:
    app = create_app(pg_overrides)
    async with app.test_app():
        yield app


async def assert_unavailable(response: Response) -> None:
    assert response.status_code == 503
    assert response.content_type == "application/problem+json"
    assert (await response.get_json())["type"] == "urn:quart-app:problem:database-unavailable"
    assert int(response.headers["Retry-After"]) > 0


async def test_a_lock_held_elsewhere_is_a_503_after_the_timeout(
    pg_app: Quart, postgres_url: str
) -> None:
    """Another session (another server, a migration, an operator's
    transaction) holds the users table: a create waits lock_timeout, then
    503, and succeeds once the lock is gone."""
    client = as_quart_client(pg_app.test_client())
    other = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
    try:
        transaction = other.transaction()
        await transaction.start()
        await other.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        response = await client.post("/users", json={"name": "A", "email": "a@example.com"})
        elapsed = time.monotonic() - started
        await transaction.rollback()
    finally:
        await other.close()
    await assert_unavailable(response)
    assert TIMEOUT <= elapsed < TIMEOUT + 2
    created = await client.post("/users", json={"name": "A", "email": "a@example.com"})
    assert created.status_code == 201
    assert await count_rows(pg_app, User) == 1


async def test_a_pool_with_every_connection_in_use_is_a_503(
    pg_overrides: dict[str, Any],
) -> None:
    app = create_app({**pg_overrides, "DATABASE_POOL_SIZE": 1, "DATABASE_MAX_OVERFLOW": 0})
    async with app.test_app():
        client = as_quart_client(app.test_client())
        engine = app_state(app).database.engine
        async with engine.connect() as held:  # the one connection, kept busy
            await held.exec_driver_sql("SELECT 1")
            started = time.monotonic()
            response = await client.get("/users/1")
            elapsed = time.monotonic() - started
        await assert_unavailable(response)
        assert TIMEOUT <= elapsed < TIMEOUT + 2
        assert (await client.get("/users/1")).status_code == 404


async def test_a_database_that_goes_away_is_a_503_and_comes_back(
    pg_app: Quart, postgres_url: str
) -> None:
    """Every connection of the app's is ended by the server (a restart, a
    failover): the next requests get a working connection (pre-ping), or a
    503, never a 500."""
    client = as_quart_client(pg_app.test_client())
    assert (
        await client.post("/users", json={"name": "A", "email": "a@x.example"})
    ).status_code == 201
    admin = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    for i in range(3):
        response = await client.post("/users", json={"name": "B", "email": f"b{i}@x.example"})
        assert response.status_code in (201, 503)
    assert (await client.get("/users?limit=100")).status_code == 200


async def test_no_server_at_the_url_stops_startup_in_one_line(pg_overrides: dict[str, Any]) -> None:
    url = f"postgresql+asyncpg://postgres:s3cret@127.0.0.1:{free_port()}/nowhere"
    settings = load_settings({**pg_overrides, "DATABASE_URL": url}, environ={})
    started = time.monotonic()
    with pytest.raises(StartupError) as raised:
        await open_database(settings)
    assert time.monotonic() - started < 5
    assert raised.value.cause.startswith("database postgresql+asyncpg://postgres:***@127.0.0.1")
    assert "s3cret" not in raised.value.cause and "\n" not in raised.value.cause
