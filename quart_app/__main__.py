"""Operator commands: ``python -m quart_app COMMAND``.

  migrate             bring the database schema to head
  purge-idempotency   delete Idempotency-Key records past QUART_APP_IDEMPOTENCY_TTL_SECONDS
  sweep-uploads       delete expired resumable uploads and their partial bytes
  check [--repair]    verify every file's bytes (size and sha256), list orphans;
                      --repair removes orphans (never rows); exit 1 unless all is well

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
from .integrity import TEMP_GRACE_SECONDS, check
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


async def _check(settings: Settings, database: Database, repair: bool) -> tuple[str, bool]:
    store = LocalBlobStore(settings.STORAGE_DIR, settings.WRITE_BATCH_BYTES)
    store.prepare()
    temp_max_age = settings.BODY_DEADLINE + TEMP_GRACE_SECONDS
    report = await check(database, store, temp_max_age, repair)
    lines = [f"checked {report.checked_files} file(s)"]
    for label, items in (
        ("file whose bytes are missing", report.missing_bytes),
        ("file whose bytes do not match its size and sha256", report.corrupt_bytes),
        ("orphan blob (no row)", report.orphan_blobs),
        ("blob row no file uses", report.unused_blob_rows),
        ("stale temp file", report.stale_temp_files),
        ("trash file", report.trash_files),
        ("orphan partial upload", report.orphan_partials),
    ):
        lines += [f"{label}: {item}" for item in items]
    lines += [f"repaired: {line}" for line in report.repaired]
    lines.append("all is well" if report.clean else "problems remain")
    return "\n".join(lines), report.clean


COMMANDS: dict[str, Callable[[Settings, Database], Awaitable[str]]] = {
    "migrate": _migrate,
    "purge-idempotency": _purge_idempotency,
    "sweep-uploads": _sweep_uploads,
}


async def _run(name: str, settings: Settings, repair: bool) -> tuple[str, bool]:
    prepare_directories(settings)
    database = Database(settings.database_url, settings.DATABASE_TIMEOUT)
    database.create_file()
    try:
        if name != "migrate" and settings.AUTO_MIGRATE:
            await upgrade_to_head(database.engine, settings)
        if name == "check":
            return await _check(settings, database, repair)
        return await COMMANDS[name](settings, database), True
    finally:
        await database.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quart_app", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=sorted([*COMMANDS, "check"]))
    parser.add_argument("--repair", action="store_true", help="with check: remove orphans")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    output, well = asyncio.run(_run(args.command, settings, args.repair))
    print(output)
    return 0 if well else 1


if __name__ == "__main__":
    sys.exit(main())
