"""The doctor's database checks: reachable and taking writes, the schema at
head, SQLite's journal and pragmas or PostgreSQL's version, and this
machine's clock against the database server's."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path

from sqlalchemy import text

from quart_app.config import ENV_PREFIX, Settings
from quart_app.db.engine import Database
from quart_app.db.schema_version import head_revision, known_revisions, schema_revision
from quart_app.ops.doctor import CLOCK_FAIL_SECONDS, CLOCK_WARN_SECONDS, FAIL, OK, WARN, Check
from quart_app.ops.startup import StartupError, describe_database, startup_step

MIGRATE = "run `python -m quart_app migrate`"
# The oldest PostgreSQL whose SQL the service uses (README "PostgreSQL and
# several servers").
MIN_POSTGRESQL = 130000


async def database_checks(settings: Settings) -> list[Check]:
    where = describe_database(settings.database_url)
    try:
        with startup_step(where):
            database = Database.from_settings(settings)
    except StartupError as error:
        return [Check("database", FAIL, error.cause)]
    try:
        return await _checks(settings, database, where)
    finally:
        await database.dispose()


async def _checks(settings: Settings, database: Database, where: str) -> list[Check]:
    if database.path is not None and not database.path.exists():
        if settings.AUTO_MIGRATE:
            detail = f"no database at {database.path} yet: serve creates and migrates it"
            return [Check("database", WARN, f"{detail} ({ENV_PREFIX}AUTO_MIGRATE), or {MIGRATE}")]
        detail = f"no database at {database.path} ({ENV_PREFIX}AUTO_MIGRATE is off)"
        return [Check("database", FAIL, f"{detail}: {MIGRATE}, or fix {ENV_PREFIX}DATABASE_URL")]
    try:
        with startup_step(where):
            # What /readyz asks: a write transaction on SQLite, a primary
            # (not a standby) on PostgreSQL.
            await database.probe()
    except StartupError as error:
        hint = f"is it running, writable, and is {ENV_PREFIX}DATABASE_URL right?"
        return [Check("database", FAIL, f"{error.cause}: {hint}")]
    checks = [
        Check("database", OK, f"reachable and takes writes: {where}"),
        await _schema(settings, database),
    ]
    if database.path is not None:
        checks.append(await _sqlite(database))
        checks.append(await asyncio.to_thread(_file_clock, database.path.parent))
    elif not database.is_sqlite:
        checks += await _postgresql(database)
    return checks


async def _schema(settings: Settings, database: Database) -> Check:
    revision = await schema_revision(database.engine)
    head = head_revision()
    if revision == head:
        return Check("schema", OK, f"at head ({head})")
    at = "no schema yet" if revision is None else f"at {revision}, behind head {head}"
    if revision is not None and revision not in known_revisions():
        return Check(
            "schema",
            FAIL,
            f"at {revision}, which this release does not know (a newer release migrated "
            "it): deploy that release, or downgrade the database with it",
        )
    if settings.AUTO_MIGRATE:
        return Check("schema", WARN, f"{at}: serve migrates it at startup, or {MIGRATE}")
    return Check("schema", FAIL, f"{at} ({ENV_PREFIX}AUTO_MIGRATE is off): {MIGRATE}")


async def _sqlite(database: Database) -> Check:
    async with database.engine.connect() as conn:
        mode = str(await conn.scalar(text("PRAGMA journal_mode")))
        synchronous = await conn.scalar(text("PRAGMA synchronous"))
        foreign_keys = await conn.scalar(text("PRAGMA foreign_keys"))
        version = await conn.scalar(text("SELECT sqlite_version()"))
    if mode.lower() != "wal":
        return Check(
            "sqlite",
            FAIL,
            f"journal_mode is {mode}, not wal: the filesystem holding {database.path} "
            "cannot share memory between processes (a network filesystem?); put the "
            "database on a local disk",
        )
    if synchronous != 2 or foreign_keys != 1:
        return Check(
            "sqlite",
            FAIL,
            f"synchronous={synchronous}, foreign_keys={foreign_keys} (wanted 2 and 1): "
            "something overrides the engine's pragmas",
        )
    return Check(
        "sqlite", OK, f"SQLite {version}, journal_mode wal, synchronous FULL, foreign_keys on"
    )


async def _postgresql(database: Database) -> list[Check]:
    async with database.engine.connect() as conn:
        number = int(str(await conn.scalar(text("SHOW server_version_num"))))
        version = str(await conn.scalar(text("SHOW server_version"))).split()[0]
        before = time.time()
        server_time = float(
            str(await conn.scalar(text("SELECT extract(epoch FROM clock_timestamp())")))
        )
        after = time.time()
    if number < MIN_POSTGRESQL:
        checks = [Check("postgresql", FAIL, f"server {version}: the service needs 13 or later")]
    else:
        checks = [Check("postgresql", OK, f"server {version}")]
    # The server read its clock between our two readings.
    skew, slack = server_time - (before + after) / 2, (after - before) / 2
    checks.append(_clock("the database server's", skew, slack))
    return checks


def _clock(other: str, skew: float, slack: float) -> Check:
    off = abs(skew) - slack
    way = "ahead of" if skew < 0 else "behind"
    said = f"this machine's clock is {abs(skew):.3f} s {way} {other}"
    fix = "run time synchronisation (chrony, systemd-timesyncd) on both"
    if off > CLOCK_FAIL_SECONDS:
        return Check("clock", FAIL, f"{said}: leases and expiry times go wrong; {fix}")
    if off > CLOCK_WARN_SECONDS:
        return Check("clock", WARN, f"{said}; {fix}")
    return Check("clock", OK, f"{said} (within {CLOCK_WARN_SECONDS:g} s)")


def _file_clock(directory: Path) -> Check:
    """SQLite has no server to compare with; the filesystem holding it has a
    clock of its own when it is a network one: a file written there gets its
    time."""
    path = directory / f".doctor-clock-{os.getpid()}-{secrets.token_hex(4)}"
    before = time.time()
    try:
        path.write_bytes(b"")
        stamp = path.stat().st_mtime
    except OSError as error:
        return Check("clock", WARN, f"cannot write beside the database to compare: {error}")
    finally:
        path.unlink(missing_ok=True)
    after = time.time()
    check = _clock(f"{directory}'s filesystem", stamp - (before + after) / 2, (after - before) / 2)
    if check.status == OK:
        detail = f"SQLite: no database server to compare with; {check.detail}"
        return Check("clock", OK, detail)
    return check
