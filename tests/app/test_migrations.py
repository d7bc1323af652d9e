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


@pytest.mark.own_database
async def test_the_upload_lease_migration_goes_down_and_up_again(
    overrides: dict[str, Any],
) -> None:
    """0010_upload_leases on both databases: an upload made before it gets
    token 0 and no lease; its downgrade drops the columns, keeping rows."""
    from alembic import command
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import create_async_engine

    from quart_app.config import load_settings
    from quart_app.db.migrate import alembic_config

    app = create_app(overrides)
    async with app.test_app():
        made = await app.test_client().post(
            "/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3"}
        )
        assert made.status_code == 201
    url = str(overrides["DATABASE_URL"])
    settings = load_settings({"DATABASE_URL": url}, environ={})

    def migrate(connection: Connection, to: str) -> set[str]:
        config = alembic_config(settings)
        config.attributes["connection"] = connection
        if to == "head":
            command.upgrade(config, to)
        else:
            command.downgrade(config, to)
        return {column["name"] for column in inspect(connection).get_columns("uploads")}

    lease_columns = {"lease_owner", "lease_token", "lease_expires_at"}
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            assert not lease_columns & await conn.run_sync(migrate, "0009_inline_blobs")
            await conn.commit()
            assert lease_columns <= await conn.run_sync(migrate, "head")
            await conn.commit()
            query = text("SELECT lease_owner, lease_token, lease_expires_at FROM uploads")
            row = (await conn.execute(query)).one()
    finally:
        await engine.dispose()
    assert tuple(row) == (None, 0, None)
