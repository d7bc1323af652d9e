from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from quart_app import create_app
from quart_app.state import app_state

# Also on PostgreSQL by default (tests/conftest.py).
pytestmark = pytest.mark.postgresql


@pytest.mark.empty_database
async def test_startup_brings_the_database_to_head(overrides: dict[str, Any]) -> None:
    app = create_app(overrides)
    async with app.test_app():
        engine = app_state(app).database.engine
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    assert "users" in tables
    assert version is not None


@pytest.mark.sqlite_only
@pytest.mark.empty_database
async def test_auto_migrate_off_leaves_the_schema_alone(overrides: dict[str, Any]) -> None:
    # Without AUTO_MIGRATE the database must exist (tests/e2e/test_startup.py).
    database = Path(str(overrides["DATABASE_URL"]).partition(":///")[2])
    database.parent.mkdir(parents=True)
    database.touch()
    app = create_app({**overrides, "AUTO_MIGRATE": False})
    async with app.test_app():
        engine = app_state(app).database.engine
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
    assert tables == []


@pytest.mark.sqlite_only
async def test_every_connection_gets_wal_busy_timeout_and_foreign_keys(
    overrides: dict[str, Any],
) -> None:
    app = create_app(overrides)
    async with app.test_app():
        engine = app_state(app).database.engine
        async with engine.connect() as conn:
            assert await conn.scalar(text("PRAGMA journal_mode")) == "wal"
            assert await conn.scalar(text("PRAGMA foreign_keys")) == 1
            assert await conn.scalar(text("PRAGMA busy_timeout")) >= 1000
            assert await conn.scalar(text("PRAGMA synchronous")) == 2  # FULL


@pytest.mark.empty_database
async def test_two_workers_starting_at_once_both_migrate_cleanly(
    overrides: dict[str, Any],
) -> None:
    first, second = create_app(overrides), create_app(overrides)
    await asyncio.gather(first.startup(), second.startup())
    try:
        async with app_state(second).database.engine.connect() as conn:
            count = await conn.scalar(text("SELECT count(*) FROM alembic_version"))
        assert count == 1
    finally:
        await asyncio.gather(first.shutdown(), second.shutdown())
