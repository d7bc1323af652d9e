"""PostgreSQL's part of the engine: its pool and timeouts, the SQLSTATEs
that mean "retry later", and the advisory locks that stand in for SQLite's
single writer (db/engine.py uses them; README "PostgreSQL and several
servers" says what each holds).

Nothing here imports the PostgreSQL dialect or asyncpg: an SQLite worker
imports this module and must not pay for them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from quart_app.config import Settings

# PostgreSQL SQLSTATEs (asyncpg's ``sqlstate``) for a database that cannot be
# used now, by class (two characters) or in full: retrying later may succeed.
PG_DISK_FULL = "53100"
_UNAVAILABLE = {
    "08",  # connection exception
    "40",  # transaction rollback: serialization failure, deadlock detected
    "53",  # insufficient resources: too many connections, out of memory
    "57",  # operator intervention: statement timeout, shutdown, cannot connect now
    "58",  # system error: I/O error
    "55P03",  # lock_not_available: lock_timeout passed
    "25006",  # read_only_sql_transaction: a standby, or the primary turned read-only
}
# One advisory lock (PostgreSQL) whose shared side every write transaction
# holds and whose exclusive side crash recovery and repair take: the
# equivalent of SQLite's single writer for the few that need it (``writing``).
WRITERS_KEY = 0x71756172745F6170  # "quart_ap"
# The advisory lock `migrate` and startup migrations hold (db/migrate.py).
MIGRATION_LOCK_KEY = 0x71756172745F6D67  # "quart_mg"


def sqlstate_unavailable(sqlstate: str) -> bool:
    """Whether a PostgreSQL error says the database cannot be used now."""
    return sqlstate[:2] in _UNAVAILABLE or sqlstate in _UNAVAILABLE


def advisory_key(name: str) -> int:
    """A PostgreSQL advisory lock key (signed 64 bits) for a name such as
    ``blob:<sha256>`` or ``file:<id>``. Two names sharing a key (odds 2**-64)
    only wait for each other."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class PoolOptions:
    """PostgreSQL's connection pool and timeouts (config.Settings says what
    each is); SQLite opens a file and has no use for them."""

    size: int
    max_overflow: int
    timeout: float  # seconds waiting for a pooled connection
    connect_timeout: float  # seconds opening a new connection
    command_timeout: float  # seconds one statement may run (statement_timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> PoolOptions:
        return cls(
            size=settings.DATABASE_POOL_SIZE,
            max_overflow=settings.DATABASE_MAX_OVERFLOW,
            timeout=settings.DATABASE_POOL_TIMEOUT,
            connect_timeout=settings.DATABASE_CONNECT_TIMEOUT,
            command_timeout=settings.DATABASE_COMMAND_TIMEOUT,
        )


def create_server_engine(url: str, timeout: float, pool: PoolOptions | None) -> AsyncEngine:
    """PostgreSQL (or another server database): a pool of connections, each
    checked before use (a server restart must not cost requests a 500), and
    every wait bounded: for a pooled connection, a new one, a lock, a
    statement."""
    options: dict[str, Any] = {"pool_pre_ping": True, "pool_timeout": timeout}
    connect_args: dict[str, Any] = {}
    if pool is not None:
        options.update(
            pool_size=pool.size, max_overflow=pool.max_overflow, pool_timeout=pool.timeout
        )
    if make_url(url).get_driver_name() == "asyncpg":
        connect_args["timeout"] = timeout if pool is None else pool.connect_timeout
        settings = {"lock_timeout": str(round(timeout * 1000))}
        if pool is not None:
            settings["statement_timeout"] = str(round(pool.command_timeout * 1000))
        connect_args["server_settings"] = settings
    return create_async_engine(url, connect_args=connect_args, **options)
