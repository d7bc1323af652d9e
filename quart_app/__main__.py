"""Operator commands: ``python -m quart_app COMMAND`` (``--help`` lists them).

The argparse registration lives here; each command's logic in its own module
(ops/serve.py, ops/doctor.py, ops/smoke.py, ops/accounts.py, ops/integrity.py,
ops/backup.py, ops/restore.py) or in a small function below.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

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
        ("upload whose partial bytes are missing", report.missing_partials),
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
        if name == "migrate" and (args.to or args.list):
            from quart_app.ops.rollback import list_revisions, migrate_to_revision

            if args.list:
                return await list_revisions(settings, database), True
            return await migrate_to_revision(settings, database, args.to), True
        if name == "users create":
            return await create_user_command(database, args.name, args.email), True
        if name == "keys create":
            line = await create_key_command(database, args.user, args.scope, args.expires_in)
            return line, True
        return await COMMANDS[name](settings, database), True
    finally:
        await database.dispose()


DESCRIPTION = """\
Operator commands for quart_app. Each reads the same QUART_APP_* settings as
the server (README "Configuration"); `python -m quart_app COMMAND --help`
says more about one."""

EPILOG = """\
Every command but migrate, doctor and smoke (and serve with
QUART_APP_AUTO_MIGRATE) refuses a database that does not exist yet: "no
database at <path>", exit status 2. Exit status 0 when all went well, 1 when
the command found a problem, 2 for a bad setting or command line (and when
backup or restore refuses: nothing was changed)."""


class PlainHelp(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; each command's summary on its own line,
    whatever the terminal's width."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            # argparse measures commands without the indent it prints them
            # with, and wraps the longest onto a line of its own.
            longest = max(map(len, action.choices), default=0)
            indented = longest + self._current_indent + self._indent_increment
            self._action_max_length = max(self._action_max_length, indented)


def _parser() -> argparse.ArgumentParser:
    prog = "python -m quart_app"
    plain = PlainHelp
    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, epilog=EPILOG, formatter_class=plain
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=summary, description=summary, formatter_class=plain, **kwargs
        )
        sub.set_defaults(command=name)
        return sub

    # Parsed by ops/serve.py itself (main dispatches before this parser);
    # registered here so that --help lists it.
    command("serve", "run the server: Hypercorn with hypercorn.toml")
    migrate = command(
        "migrate",
        "create the database if need be, schema to head",
        epilog='Rolling back: README "Upgrades and rollback".',
    )
    migrate.add_argument(
        "--to",
        metavar="REVISION",
        help="to this revision (or base) instead, down as well as up; blobs kept in "
        "rows are moved to files before 0009 is undone",
    )
    migrate.add_argument(
        "--list", action="store_true", help="the revisions, oldest first, the database's marked *"
    )
    command("doctor", "check settings, database, storage, admin key, clock")
    smoke = command("smoke", "a short end-to-end run against a running server")
    smoke.add_argument(
        "url", metavar="URL", help="the server's base URL, e.g. http://127.0.0.1:8000"
    )
    smoke.add_argument("--key", required=True, help="an admin API key of that server")
    command("purge-idempotency", "delete expired Idempotency-Key records")
    command("sweep-uploads", "delete expired resumable uploads and their bytes")
    check = command("check", "verify every file's bytes, list orphans")
    check.add_argument("--repair", action="store_true", help="remove orphans (never rows)")
    backup = command("backup", "copy the database and its blobs into DEST, while serving")
    backup.add_argument("dest", metavar="DEST", type=Path, help="a new or empty directory")
    restore = command("restore", "a backup into the configured (empty) database and storage")
    restore.add_argument("src", metavar="SRC", type=Path, help="a directory `backup` made")
    restore.add_argument(
        "--force", action="store_true", help="replace an instance that is not empty"
    )
    for noun, summary in (("users", "manage users (accounts)"), ("keys", "manage API keys")):
        group = command(noun, summary)
        actions = group.add_subparsers(title="actions", metavar="ACTION", required=True)
        create = actions.add_parser(
            "create", help=f"create one ({noun} create --help)", formatter_class=plain
        )
        create.set_defaults(command=f"{noun} create")
        if noun == "users":
            create.description = "Create a user and print its id."
            create.add_argument("--name", required=True)
            create.add_argument("--email", required=True)
        else:
            create.description = (
                "Create an API key for a user and print it, once: only its hash is stored."
            )
            create.add_argument(
                "--user", type=int, required=True, help="the user's id (0: operator)"
            )
            create.add_argument(
                "--scope", action="append", default=[], help="read, write, admin (repeatable)"
            )
            create.add_argument("--expires-in", type=int, default=None, help="seconds")
    return parser


def _copy_command(args: argparse.Namespace, settings: Settings) -> int:
    from quart_app.ops.backup import Failed, Refused, backup
    from quart_app.ops.restore import restore

    try:
        if args.command == "backup":
            line = backup(settings, args.dest)
        else:
            line = restore(settings, args.src, args.force)
    except Refused as error:
        print(f"{args.command}: refused: {error}", file=sys.stderr)
        return 2
    except Failed as error:
        print(f"{args.command}: failed: {error}", file=sys.stderr)
        return 1
    print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from quart_app.ops.serve import serve

        return serve(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "doctor":
        from quart_app.ops.doctor import doctor

        lines, healthy = doctor()
        print("\n".join(lines))
        return 0 if healthy else 1
    if args.command == "smoke":
        from quart_app.ops.smoke import smoke

        return smoke(args.url, args.key)
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"configuration error: {error.cause}", file=sys.stderr)
        return 2
    if args.command in ("backup", "restore"):
        return _copy_command(args, settings)
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
