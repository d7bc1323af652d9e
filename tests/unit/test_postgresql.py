"""PostgreSQL's part of the engine without a server: which SQLSTATEs are a
503 (or 507) rather than a 500, advisory keys, and the pool settings."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError

from quart_app.config import load_settings
from quart_app.db.engine import database_fault
from quart_app.db.postgresql import PoolOptions, advisory_key
from quart_app.errors import DatabaseUnavailable, InsufficientStorage


class DriverError(Exception):
    """What SQLAlchemy's asyncpg adapter raises: the SQLSTATE as ``sqlstate``."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def fault(sqlstate: str) -> object:
    error = DBAPIError("SELECT 1", None, DriverError("something", sqlstate))
    found = database_fault(error)
    return None if found is None else type(found)


@pytest.mark.parametrize(
    "sqlstate",
    [
        "08006",  # connection_failure
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "53300",  # too_many_connections
        "55P03",  # lock_not_available (lock_timeout)
        "57014",  # query_canceled (statement_timeout)
        "57P01",  # admin_shutdown
        "57P03",  # cannot_connect_now
        "25006",  # read_only_sql_transaction
    ],
)
def test_a_database_that_cannot_be_used_now_is_a_503(sqlstate: str) -> None:
    assert fault(sqlstate) is DatabaseUnavailable


def test_a_full_disk_is_a_507() -> None:
    assert fault("53100") is InsufficientStorage


@pytest.mark.parametrize("sqlstate", ["23505", "42P01", "22001", "55000"])
def test_a_bug_or_bad_data_stays_a_500(sqlstate: str) -> None:
    assert fault(sqlstate) is None


def test_advisory_keys_are_stable_signed_64_bit_and_distinct() -> None:
    key = advisory_key("blob:" + "0" * 64)
    assert key == advisory_key("blob:" + "0" * 64)
    assert -(2**63) <= key < 2**63
    assert advisory_key("file:a") != advisory_key("file:b")


def test_pool_options_come_from_the_settings() -> None:
    settings = load_settings(
        {"DATABASE_POOL_SIZE": 2, "DATABASE_MAX_OVERFLOW": 0, "DATABASE_COMMAND_TIMEOUT": 9},
        environ={},
    )
    options = PoolOptions.from_settings(settings)
    assert (options.size, options.max_overflow, options.command_timeout) == (2, 0, 9.0)
