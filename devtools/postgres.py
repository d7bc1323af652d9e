"""PostgreSQL for the tests and the bench: the server at 127.0.0.1:5432 when
one runs there (the development and CI machines), else a throwaway cluster
started from Debian's binaries (initdb and pg_ctl, run as the ``postgres``
user: the server refuses root), else a reason to skip.

Every test database gets a name of its own
(``quart_app_test_<unix time>_<pid>_<hex>``) and is dropped afterwards, so
several test runs share one server; one left by a killed run is dropped by
a run six hours later. A run
migrates one template database once; each test's database is a copy of it
(``CREATE DATABASE ... TEMPLATE``), which is much cheaper than migrating.

``QUART_APP_TEST_POSTGRES_URL`` (``postgresql://user@host:port``) points the
tests at another server.
"""

from __future__ import annotations

import asyncio
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import make_url

from .ports import free_port

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432"
NAME_PREFIX = "quart_app_test_"
# A test run never takes this long: an older test database was left by a
# run that was killed, and the next run drops it.
STALE_SECONDS = 6 * 3600.0
T = TypeVar("T")
# One thread drops databases in the background, in order.
_DROPS = ThreadPoolExecutor(1, thread_name_prefix="drop-database")


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    # Drops still running (drop_later): a DROP DATABASE waits for the
    # checkpointer, so test teardowns do not wait for it.
    dropping: list[Future[None]] = field(default_factory=list)

    def url(self, database: str, driver: str = "asyncpg") -> str:
        """The SQLAlchemy URL of one database on this server."""
        return f"postgresql+{driver}://{self.user}@{self.host}:{self.port}/{database}"

    async def _admin(self, *statements: str) -> None:
        connection = await asyncpg.connect(
            host=self.host, port=self.port, user=self.user, database="postgres", timeout=10
        )
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    def run(self, *statements: str) -> None:
        """Run statements in the ``postgres`` database, synchronously (from
        fixtures and the bench), in a thread with its own event loop."""
        run_in_thread(self._admin(*statements))

    def create_database(self, template: str | None = None) -> str:
        """A new, uniquely named database (a copy of ``template``, else
        empty); returns its name."""
        name = f"{NAME_PREFIX}{int(time.time())}_{os.getpid()}_{secrets.token_hex(4)}"
        self.run(f'CREATE DATABASE "{name}" TEMPLATE "{template or "template0"}"')
        return name

    @contextmanager
    def temporary_database(self, template: str | None = None) -> Iterator[str]:
        """``create_database``, dropped at the end of the block (connections
        still open to it are ended); yields its name."""
        name = self.create_database(template)
        try:
            yield name
        finally:
            self.drop_database(name)

    def settings(self, *names: str) -> dict[str, str]:
        """``SHOW`` of each setting named (fsync, synchronous_commit...)."""

        async def show() -> dict[str, str]:
            connection = await asyncpg.connect(
                host=self.host, port=self.port, user=self.user, database="postgres", timeout=10
            )
            try:
                return {name: str(await connection.fetchval(f"SHOW {name}")) for name in names}
            finally:
                await connection.close()

        return run_in_thread(show())

    def count_rows(self, database: str, table: str) -> int:
        """The number of rows in one table of ``database``."""

        async def count() -> int:
            connection = await asyncpg.connect(
                host=self.host, port=self.port, user=self.user, database=database, timeout=10
            )
            try:
                found: int = await connection.fetchval(f'SELECT count(*) FROM "{table}"')
            finally:
                await connection.close()
            return found

        return run_in_thread(count())

    def empty_tables(self, database: str, tables: list[str]) -> None:
        """Empty these tables of ``database`` and restart their id sequences."""
        names = ", ".join(f'"{table}"' for table in tables)

        async def empty() -> None:
            connection = await asyncpg.connect(
                host=self.host, port=self.port, user=self.user, database=database, timeout=10
            )
            try:
                # Bounded: a connection a test left in a transaction fails
                # the next test's setup rather than hanging it.
                await connection.execute("SET lock_timeout = '10s'")
                await connection.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
            finally:
                await connection.close()

        run_in_thread(empty())

    def drop_stale_databases(self, older_than: float = STALE_SECONDS) -> list[str]:
        """Drop test databases created more than ``older_than`` seconds ago
        (their run was killed before it could); returns their names."""

        async def stale() -> list[str]:
            connection = await asyncpg.connect(
                host=self.host, port=self.port, user=self.user, database="postgres", timeout=10
            )
            try:
                rows = await connection.fetch(
                    "SELECT datname FROM pg_database WHERE datname LIKE $1", NAME_PREFIX + "%"
                )
            finally:
                await connection.close()
            names = [str(row[0]) for row in rows]
            cutoff = time.time() - older_than
            return [n for n in names if _created(n) < cutoff]

        names = run_in_thread(stale())
        for name in names:
            self.drop_database(name)
        return names

    def drop_database(self, name: str) -> None:
        """Drop it, ending any connection still open to it."""
        self.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_later(self, name: str) -> None:
        """Drop it in the background; ``wait_for_drops`` waits for them all."""
        self.dropping.append(_DROPS.submit(self.drop_database, name))

    def wait_for_drops(self) -> None:
        dropping, self.dropping = self.dropping, []
        for drop in dropping:
            drop.result()


def _created(name: str) -> float:
    """When a test database was created, from its name (inf if unknown)."""
    stamp = name.removeprefix(NAME_PREFIX).split("_", 1)[0]
    return float(stamp) if stamp.isdigit() and len(stamp) == 10 else float("inf")


def run_in_thread(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end on a new event loop in a thread of its
    own: callable from sync code whether or not this thread has a loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


def _accepting(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def running_server() -> PostgresServer | None:
    """The configured (or default) server, if it accepts connections."""
    url = make_url(os.environ.get("QUART_APP_TEST_POSTGRES_URL", DEFAULT_URL))
    host, port = url.host or "127.0.0.1", url.port or 5432
    if not _accepting(host, port):
        return None
    return PostgresServer(host, port, url.username or "postgres")


@contextmanager
def throwaway_cluster() -> Iterator[PostgresServer]:
    """A cluster of its own in a temp directory on a free loopback port,
    stopped and removed afterwards. Raises RuntimeError saying why it
    cannot be had (no binaries, no ``postgres`` user, initdb failed)."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise RuntimeError("running as root without runuser to become postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="quart_app_pg_"))
    data = root / "data"
    if as_user:
        shutil.chown(root, "postgres")
    port = free_port()
    try:
        subprocess.run(
            [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True,
            capture_output=True,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
        log = str(root / "log")
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", log, "-w", "start"],
            check=True,
            capture_output=True,
        )
    except (subprocess.CalledProcessError, LookupError) as error:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"could not start a throwaway PostgreSQL cluster: {error}") from None
    try:
        yield PostgresServer("127.0.0.1", port, "postgres")
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """The running server, else a throwaway cluster. Raises RuntimeError
    with the reason (for a skip) when neither can be had."""
    server = running_server()
    if server is not None:
        yield server
        return
    with throwaway_cluster() as started:
        yield started


def migrated_template(server: PostgresServer) -> str:
    """A new database with the schema at head, to copy per test; its name."""
    from quart_app.config import load_settings
    from quart_app.db.engine import Database
    from quart_app.db.migrate import upgrade_to_head

    name = server.create_database()
    url = server.url(name)

    async def migrate() -> None:
        database = Database(url, 30.0)
        try:
            await upgrade_to_head(database.engine, load_settings({"DATABASE_URL": url}, environ={}))
        finally:
            await database.dispose()

    try:
        run_in_thread(migrate())
    except BaseException:
        server.drop_database(name)
        raise
    return name
