"""Alembic, driven from code: startup upgrades, the CLI, and the drift test."""

from __future__ import annotations

import asyncio
import threading

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from quart_app.config import Settings
from quart_app.db.postgresql import MIGRATION_LOCK_KEY
from quart_app.db.schema_version import MIGRATIONS_DIR

# Alembic's ``context`` is a process-wide proxy: two upgrades interleaved in
# one process would run one's migration on the other's connection (and
# deadlock on SQLite's write lock). Across processes BEGIN IMMEDIATE (or
# PostgreSQL's advisory lock) orders them; within one, this lock does. A
# threading lock, polled, because apps in one process may run on different
# event loops.
_UPGRADE_LOCK = threading.Lock()


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a literal % in a URL must be doubled.
    config.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    return config


def revisions(settings: Settings) -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(alembic_config(settings))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def revisions_undone(settings: Settings, current: str | None, target: str) -> list[str]:
    """The revisions whose downgrades run to go from ``current`` to
    ``target``, newest first; none when ``target`` is not below ``current``.
    Raises alembic's CommandError for a revision it does not know."""
    if current is None or target == "head":
        return []
    script = ScriptDirectory.from_config(alembic_config(settings))
    below = {r.revision for r in script.iterate_revisions(current, "base")}
    if target != "base" and (script.get_revision(target) is None or target not in below):
        return []
    return [r.revision for r in script.iterate_revisions(current, target)]


async def upgrade_to_head(engine: AsyncEngine, settings: Settings) -> None:
    """Bring the schema to head on the app's own engine. Servers (and
    workers, and ``python -m quart_app migrate``) starting at once take
    turns, and the later ones find the schema already at head: on SQLite the
    transaction starts IMMEDIATE; on PostgreSQL, whose DDL is transactional,
    the whole upgrade is one transaction holding an advisory lock, without
    the lock and statement timeouts requests have (a migration may wait
    for a long one, and take long itself)."""
    await migrate_to(engine, settings, "head")


async def migrate_to(engine: AsyncEngine, settings: Settings, revision: str) -> None:
    """Upgrade to ``revision`` (or downgrade, when it is below the current
    one), as upgrade_to_head does."""
    config = alembic_config(settings)

    def _upgrade(connection: Connection) -> None:
        config.attributes["connection"] = connection
        current = MigrationContext.configure(connection).get_current_revision()
        script = ScriptDirectory.from_config(config)
        if current is not None and (
            revision == "base"
            or (
                revision != "head"
                and revision in {r.revision for r in script.iterate_revisions(current, "base")}
            )
        ):
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)

    is_sqlite = engine.dialect.name == "sqlite"
    options = {"sqlite_begin": "IMMEDIATE"} if is_sqlite else {}
    while not _UPGRADE_LOCK.acquire(blocking=False):  # noqa: ASYNC110 (see _UPGRADE_LOCK)
        await asyncio.sleep(0.01)
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(**options)
            if engine.dialect.name == "postgresql":
                await conn.execute(text("SET LOCAL lock_timeout = 0"))
                await conn.execute(text("SET LOCAL statement_timeout = 0"))
                await conn.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"))
            await conn.run_sync(_upgrade)
            await conn.commit()
    finally:
        _UPGRADE_LOCK.release()
