"""Operator commands: ``python -m quart_app COMMAND``.

  serve [--config hypercorn.toml] [--bind ADDRESS]... [--workers N]
                      run the server (Hypercorn); fails with one line and a
                      non-zero exit status when it cannot start (ops/serve.py)
  migrate             create the database if need be, bring its schema to head
  purge-idempotency   delete Idempotency-Key records past QUART_APP_IDEMPOTENCY_TTL_SECONDS
  sweep-uploads       delete expired resumable uploads and their partial bytes
  check [--repair]    verify every file's bytes (size and sha256), list orphans;
                      --repair removes orphans (never rows); exit 1 unless all is well
  users create --name NAME --email EMAIL
                      create a user (an account) and print its id
  keys create --user ID [--scope read|write|admin]... [--expires-in SECONDS]
                      create an API key for user ID (0: the operator account)
                      and print it, once: only its hash is stored

They read the same QUART_APP_* settings as the server. Every command but
``migrate`` (and ``serve`` with QUART_APP_AUTO_MIGRATE) refuses a database
that does not exist yet, rather than checking or sweeping a new empty one:
"no database at <path>", exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta

from quart_app.config import ConfigError, Settings, load_settings
from quart_app.db.engine import Database
from quart_app.db.models import utc_now
from quart_app.db.schema_version import schema_revision
from quart_app.ops.accounts import CommandFailed, create_key_command, create_user_command
from quart_app.ops.instance import prepare_directories
from quart_app.ops.integrity import TEMP_GRACE_SECONDS, check
from quart_app.ops.startup import StartupError, describe_database, startup_step
from quart_app.services.idempotency import purge_expired
from quart_app.services.resumable_uploads import sweep_expired
from quart_app.storage.factory import build_store


async def _migrate(settings: Settings, database: Database) -> str:
    from quart_app.db.migrate import upgrade_to_head

    await upgrade_to_head(database.engine, settings)
    return "database at head"


async def _purge_idempotency(settings: Settings, database: Database) -> str:
    cutoff = utc_now() - timedelta(seconds=settings.IDEMPOTENCY_TTL_SECONDS)
    removed = await purge_expired(database, cutoff)
    return f"{removed} idempotency record(s) purged"


async def _sweep_uploads(settings: Settings, database: Database) -> str:
    store = build_store(settings)
    try:
        removed = await sweep_expired(database, store, utc_now())
    finally:
        await store.close()
    return f"{removed} expired upload(s) removed"


async def _check(settings: Settings, database: Database, repair: bool) -> tuple[str, bool]:
    store = build_store(settings)
    temp_max_age = settings.BODY_DEADLINE + TEMP_GRACE_SECONDS
    try:
        report = await check(database, store, temp_max_age, repair)
    finally:
        await store.close()
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


class NoDatabase(Exception):
    """The command needs a database that exists (and has a schema)."""


async def _existing_schema(database: Database) -> None:
    if database.path is not None and not database.path.exists():
        raise NoDatabase(f"no database at {database.path}")
    if await schema_revision(database.engine) is None:
        raise NoDatabase(f"no quart_app schema in {describe_database(database.url)}")


async def _run(name: str, settings: Settings, args: argparse.Namespace) -> tuple[str, bool]:
    step = f"database {describe_database(settings.database_url)}"
    with startup_step(step):
        database = Database.from_settings(settings)
    try:
        with startup_step(step):
            if name == "migrate":
                await asyncio.to_thread(database.create_file)
            else:
                await _existing_schema(database)
        prepare_directories(settings)
        if name != "migrate" and settings.AUTO_MIGRATE:
            # Imported here: `serve` (this module too) must not load Alembic
            # into a server that finds its schema at head (its memory cost:
            # db/schema_version.py).
            from quart_app.db.migrate import upgrade_to_head

            await upgrade_to_head(database.engine, settings)
        if name == "check":
            return await _check(settings, database, args.repair)
        if name == "users create":
            return await create_user_command(database, args.name, args.email), True
        if name == "keys create":
            line = await create_key_command(database, args.user, args.scope, args.expires_in)
            return line, True
        return await COMMANDS[name](settings, database), True
    finally:
        await database.dispose()


def _parse(argv: list[str]) -> argparse.Namespace:
    prog = "python -m quart_app"
    if argv[:2] == ["users", "create"]:
        parser = argparse.ArgumentParser(prog=f"{prog} users create")
        parser.add_argument("--name", required=True)
        parser.add_argument("--email", required=True)
        args = parser.parse_args(argv[2:])
    elif argv[:2] == ["keys", "create"]:
        parser = argparse.ArgumentParser(prog=f"{prog} keys create")
        parser.add_argument("--user", type=int, required=True, help="the user's id (0: operator)")
        parser.add_argument("--scope", action="append", default=[], help="read, write, admin")
        parser.add_argument("--expires-in", type=int, default=None, help="seconds")
        args = parser.parse_args(argv[2:])
    else:
        parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
        parser.add_argument(
            "command", choices=sorted([*COMMANDS, "check", "serve", "users", "keys"])
        )
        parser.add_argument("--repair", action="store_true", help="with check: remove orphans")
        args = parser.parse_args(argv)
        if args.command in ("users", "keys"):
            parser.error(f"{args.command} takes a subcommand: {args.command} create ...")
        return args
    args.command = " ".join(argv[:2])
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from quart_app.ops.serve import serve

        return serve(argv[1:])
    args = _parse(argv)
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"configuration error: {error.cause}", file=sys.stderr)
        return 2
    try:
        output, well = asyncio.run(_run(args.command, settings, args))
    except CommandFailed as error:
        print(f"{args.command}: {error}", file=sys.stderr)
        return 1
    except NoDatabase as error:
        print(
            f"{error}: create it with `python -m quart_app migrate`, or point "
            "QUART_APP_DATABASE_URL at the database you mean",
            file=sys.stderr,
        )
        return 2
    except StartupError as error:
        print(f"{args.command}: {error.cause}", file=sys.stderr)
        return 1
    print(output)
    return 0 if well else 1


if __name__ == "__main__":
    sys.exit(main())
