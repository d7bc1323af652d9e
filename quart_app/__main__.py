"""Operator commands: ``python -m quart_app COMMAND``.

  migrate             bring the database schema to head
  purge-idempotency   delete Idempotency-Key records past QUART_APP_IDEMPOTENCY_TTL_SECONDS
  sweep-uploads       delete expired resumable uploads and their partial bytes

They read the same QUART_APP_* settings as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta

from .config import ConfigError, Settings, load_settings
from .db import Database
from .instance import prepare_directories
from .migrate import upgrade_to_head
from .models import utc_now
from .services.idempotency import purge_expired
from .services.uploads import sweep_expired
from .storage.local import LocalBlobStore


async def _migrate(settings: Settings, database: Database) -> str:
    await upgrade_to_head(database.engine, settings)
    return "database at head"


async def _purge_idempotency(settings: Settings, database: Database) -> str:
    cutoff = utc_now() - timedelta(seconds=settings.IDEMPOTENCY_TTL_SECONDS)
    removed = await purge_expired(database, cutoff)
    return f"{removed} idempotency record(s) purged"


async def _sweep_uploads(settings: Settings, database: Database) -> str:
    store = LocalBlobStore(settings.STORAGE_DIR, settings.WRITE_BATCH_BYTES)
    store.prepare()
    removed = await sweep_expired(database, store, utc_now())
    return f"{removed} expired upload(s) removed"


COMMANDS: dict[str, Callable[[Settings, Database], Awaitable[str]]] = {
    "migrate": _migrate,
    "purge-idempotency": _purge_idempotency,
    "sweep-uploads": _sweep_uploads,
}


async def _run(name: str, settings: Settings) -> str:
    prepare_directories(settings)
    database = Database(settings.database_url)
    try:
        if name != "migrate" and settings.AUTO_MIGRATE:
            await upgrade_to_head(database.engine, settings)
        return await COMMANDS[name](settings, database)
    finally:
        await database.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quart_app", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    print(asyncio.run(_run(args.command, settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
