"""Opening what a server needs before it serves, the database and the blob
store, each failure a StartupError naming what could not be opened."""

from __future__ import annotations

import asyncio

from quart_app.config import Settings
from quart_app.db.engine import Database
from quart_app.db.schema_version import schema_at_head, schema_revision
from quart_app.ops.startup import StartupError, describe_database, startup_step
from quart_app.storage import MaintainedStore, StorageUnwritable
from quart_app.storage.factory import build_store


async def open_database(settings: Settings) -> tuple[Database, str | None]:
    """The database a server serves, and its schema revision. With
    AUTO_MIGRATE a missing SQLite file is created and the schema brought to
    head; without it a missing file stops startup. Failures raise
    StartupError naming the database (password hidden) and the cause."""
    url = settings.database_url
    with startup_step(f"database {describe_database(url)}"):
        database = Database.from_settings(settings)
        try:
            if database.path is not None and not database.path.exists():
                if not settings.AUTO_MIGRATE:
                    raise StartupError(
                        f"no database at {database.path} (QUART_APP_AUTO_MIGRATE is off: "
                        "create it with `python -m quart_app migrate`)"
                    )
                await asyncio.to_thread(database.create_file)
            if settings.AUTO_MIGRATE and not await schema_at_head(database.engine):
                await _migrate(database, settings)
            revision = await schema_revision(database.engine)
        except BaseException:
            await database.dispose()
            raise
    return database, revision


async def _migrate(database: Database, settings: Settings) -> None:
    """The schema to head; a revision Alembic cannot follow (the database was
    migrated by a newer release, or its history was edited) is a StartupError
    naming the database and the revision, not a traceback."""
    from alembic.util import CommandError

    from quart_app.db.migrate import upgrade_to_head

    try:
        await upgrade_to_head(database.engine, settings)
    except CommandError as error:
        hint = ""
        if "Can't locate revision" in str(error):
            hint = (
                " (a newer release migrated it: run that release, or restore the backup"
                " taken before the upgrade)"
            )
        raise StartupError(
            f"database {describe_database(settings.database_url)}: cannot migrate: {error}{hint}"
        ) from None


async def open_store(settings: Settings) -> MaintainedStore:
    """The configured store, prepared and shown to be writable (a bucket
    that cannot be reached, credentials it refuses); raises a StartupError
    naming it otherwise."""
    where = (
        f"object store {settings.STORAGE_URL}"
        if settings.STORAGE_URL
        else f"storage directory {settings.STORAGE_DIR}"
    )
    # An object store gets a few database timeouts: its client retries.
    patience = settings.DATABASE_TIMEOUT * 3
    with startup_step(where):
        store = build_store(settings)
        try:
            await asyncio.wait_for(store.probe(), patience)
        except TimeoutError:
            await store.close()
            raise StorageUnwritable(f"no answer within {patience:g} s") from None
        except BaseException:
            await store.close()
            raise
    return store
