"""The migrations against the models, without an app: autogenerate finds no
difference, and the head read from the files is Alembic's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from quart_app.config import load_settings
from quart_app.db.migrate import upgrade_to_head
from quart_app.db.models import Base


async def test_autogenerate_finds_no_difference_between_models_and_migrations(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"
    engine = create_async_engine(url)
    await upgrade_to_head(engine, load_settings({"DATABASE_URL": url}, environ={}))

    def diff(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
    await engine.dispose()


def test_the_head_read_from_the_files_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    from quart_app.db.schema_version import MIGRATIONS_DIR, head_revision

    assert head_revision() == ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


async def test_quotas_migration_goes_down_and_up_again(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import inspect

    from quart_app.db.migrate import alembic_config

    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"
    engine = create_async_engine(url)
    settings = load_settings({"DATABASE_URL": url}, environ={})
    await upgrade_to_head(engine, settings)

    def schema(connection: Connection) -> tuple[set[str], set[str]]:
        inspector = inspect(connection)
        users = {column["name"] for column in inspector.get_columns("users")}
        return set(inspector.get_table_names()), users

    def migrate(connection: Connection, to: str) -> None:
        config = alembic_config(settings)
        config.attributes["connection"] = connection
        if to == "head":
            command.upgrade(config, to)
        else:
            command.downgrade(config, to)

    async with engine.connect() as conn:
        tables, users = await conn.run_sync(schema)
        assert "quota_reservations" in tables and {"quota_bytes", "quota_files"} <= users
        await conn.run_sync(migrate, "0005_accounts")
        await conn.commit()
        tables, users = await conn.run_sync(schema)
        assert "quota_reservations" not in tables and not {"quota_bytes", "quota_files"} & users
        await conn.run_sync(migrate, "head")
        await conn.commit()
        tables, users = await conn.run_sync(schema)
        assert "quota_reservations" in tables and {"quota_bytes", "quota_files"} <= users
    await engine.dispose()
