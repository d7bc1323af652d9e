from __future__ import annotations

import asyncio
import hashlib
import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from quart import Quart
from quart.typing import TestClientProtocol as AppClient
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from devtools.auth import bearer
from devtools.form_data import multipart, multipart_headers, part
from quart_app import create_app
from quart_app.__main__ import main
from quart_app.config import load_settings
from quart_app.db.engine import Database
from quart_app.db.migrate import migrate_to, revisions
from quart_app.db.models import Base
from quart_app.db.schema_version import schema_revision
from quart_app.ops.rollback import migrate_to_revision
from quart_app.state import app_state
from quart_app.storage.factory import build_store

# Also on PostgreSQL by default (tests/conftest.py).
pytestmark = pytest.mark.postgresql


@pytest.mark.empty_database
async def test_startup_brings_the_database_to_head(overrides: dict[str, Any]) -> None:
    app = create_app(overrides)
    async with app.test_app():
        engine = app_state(app).database.engine
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    assert "users" in tables
    assert version is not None


@pytest.mark.sqlite_only
@pytest.mark.empty_database
async def test_auto_migrate_off_leaves_the_schema_alone(overrides: dict[str, Any]) -> None:
    # Without AUTO_MIGRATE the database must exist (tests/e2e/test_startup.py).
    database = Path(str(overrides["DATABASE_URL"]).partition(":///")[2])
    database.parent.mkdir(parents=True)
    database.touch()
    app = create_app({**overrides, "AUTO_MIGRATE": False})
    async with app.test_app():
        engine = app_state(app).database.engine
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
    assert tables == []


@pytest.mark.sqlite_only
async def test_every_connection_gets_wal_busy_timeout_and_foreign_keys(
    overrides: dict[str, Any],
) -> None:
    app = create_app(overrides)
    async with app.test_app():
        engine = app_state(app).database.engine
        async with engine.connect() as conn:
            assert await conn.scalar(text("PRAGMA journal_mode")) == "wal"
            assert await conn.scalar(text("PRAGMA foreign_keys")) == 1
            assert await conn.scalar(text("PRAGMA busy_timeout")) >= 1000
            assert await conn.scalar(text("PRAGMA synchronous")) == 2  # FULL


@pytest.mark.empty_database
async def test_two_workers_starting_at_once_both_migrate_cleanly(
    overrides: dict[str, Any],
) -> None:
    first, second = create_app(overrides), create_app(overrides)
    await asyncio.gather(first.startup(), second.startup())
    try:
        async with app_state(second).database.engine.connect() as conn:
            count = await conn.scalar(text("SELECT count(*) FROM alembic_version"))
        assert count == 1
    finally:
        await asyncio.gather(first.shutdown(), second.shutdown())


@pytest.mark.own_database
async def test_the_upload_lease_migration_goes_down_and_up_again(
    overrides: dict[str, Any],
) -> None:
    """0010_upload_leases on both databases: an upload made before it gets
    token 0 and no lease; its downgrade drops the columns, keeping rows."""
    from alembic import command
    from sqlalchemy.ext.asyncio import create_async_engine

    from quart_app.config import load_settings
    from quart_app.db.migrate import alembic_config

    app = create_app(overrides)
    async with app.test_app():
        made = await app.test_client().post(
            "/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3"}
        )
        assert made.status_code == 201
    url = str(overrides["DATABASE_URL"])
    settings = load_settings({"DATABASE_URL": url}, environ={})

    def migrate(connection: Connection, to: str) -> set[str]:
        config = alembic_config(settings)
        config.attributes["connection"] = connection
        if to == "head":
            command.upgrade(config, to)
        else:
            command.downgrade(config, to)
        return {column["name"] for column in inspect(connection).get_columns("uploads")}

    lease_columns = {"lease_owner", "lease_token", "lease_expires_at"}
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            assert not lease_columns & await conn.run_sync(migrate, "0009_inline_blobs")
            await conn.commit()
            assert lease_columns <= await conn.run_sync(migrate, "head")
            await conn.commit()
            query = text("SELECT lease_owner, lease_token, lease_expires_at FROM uploads")
            row = (await conn.execute(query)).one()
    finally:
        await engine.dispose()
    assert tuple(row) == (None, 0, None)


# Columns a migration changes on purpose, left out when rows are compared
# across it: blobs kept in rows are moved to files before 0009 is undone
# (checked against the store instead), and Idempotency-Key records have no
# owner before 0005 ('anonymous'), the operator's after it.
CHANGED_ON_PURPOSE = {("blobs", "content"), ("idempotency_records", "owner")}
Snapshot = dict[str, tuple[list[str], list[tuple[Any, ...]]]]


async def snapshot(database: Database) -> Snapshot:
    """Every table's columns and rows (alembic's own table aside)."""

    def read(connection: Connection) -> Snapshot:
        found: Snapshot = {}
        for table in inspect(connection).get_table_names():
            if table == "alembic_version":
                continue
            result = connection.execute(text(f'SELECT * FROM "{table}"'))
            found[table] = (list(result.keys()), [tuple(row) for row in result])
        return found

    async with database.engine.connect() as conn:
        return await conn.run_sync(read)


def rows_by_common_columns(
    older: Snapshot, newer: Snapshot
) -> Iterator[tuple[str, list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """For each table of ``older`` (the older schema's), its rows and
    ``newer``'s, both cut to the columns they share, sorted."""
    for table, (columns, rows) in older.items():
        assert table in newer, f"{table} is gone"
        newer_columns, newer_rows = newer[table]
        shared = [c for c in columns if c in newer_columns and (table, c) not in CHANGED_ON_PURPOSE]

        yield table, _cut(shared, columns, rows), _cut(shared, newer_columns, newer_rows)


def _cut(shared: list[str], names: list[str], rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    at = [names.index(c) for c in shared]
    return sorted((tuple(row[i] for i in at) for row in rows), key=repr)


async def user_with_key(admin: AppClient, name: str) -> str:
    """A new user, given a quota, and a read-write key of theirs."""
    user = await admin.post(
        "/users", json={"name": name, "email": f"{name}@example.com"}, headers=bearer()
    )
    assert user.status_code == 201
    user_id = (await user.get_json())["id"]
    patched = await admin.patch(f"/users/{user_id}", json={"quota_bytes": 10**9}, headers=bearer())
    assert patched.status_code == 200
    key = await admin.post(
        f"/users/{user_id}/keys", json={"scopes": ["read", "write"]}, headers=bearer()
    )
    assert key.status_code == 201
    secret: str = (await key.get_json())["secret"]
    return secret


async def make_representative_rows(app: Quart) -> dict[str, bytes]:
    """Through the API, at head: two users with keys and quotas, files
    (one kept in its blob row, one in a file, two in a multipart batch),
    a download link, resumable uploads (one finished, one not), a queued
    archive import, an Idempotency-Key record each. The stored bytes by
    sha256."""
    sent: dict[str, bytes] = {}
    async with app.test_app() as test_app:
        admin = test_app.test_client()
        keys = [await user_with_key(admin, name) for name in ("ada", "bob")]

        async def ok(answer: Any, status: int = 201) -> Any:
            response = await answer
            assert response.status_code == status, await response.get_data()
            return response

        for owner, key in zip(("ada", "bob"), keys, strict=True):
            as_owner = bearer(key)
            small, large = f"{owner} small".encode(), os.urandom(5000)
            sent |= {hashlib.sha256(b).hexdigest(): b for b in (small, large)}
            await ok(admin.put(f"/files/{owner}-small", data=small, headers=as_owner))
            await ok(admin.put(f"/files/{owner}-large", data=large, headers=as_owner))
            body = multipart(part("file", b"one", "1.txt"), part("file", b"two", "2.txt"))
            replayed = {**multipart_headers(), **as_owner, "Idempotency-Key": f"{owner}-key"}
            await ok(admin.post("/files", data=body, headers=replayed))
            await ok(admin.post(f"/files/{owner}-large/links", headers=as_owner))
            tus = {"Tus-Resumable": "1.0.0", **as_owner}
            started = await ok(admin.post("/uploads", headers={**tus, "Upload-Length": "100"}))
            assert started.headers["Location"]
            finished = await ok(admin.post("/uploads", headers={**tus, "Upload-Length": "3"}))
            patch = {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
            await ok(admin.patch(finished.headers["Location"], data=b"tus", headers=patch), 204)
            archive = io.BytesIO()
            with zipfile.ZipFile(archive, "w") as zipped:
                zipped.writestr("inside.txt", f"{owner} imported")
            headers = {**as_owner, "Content-Type": "application/zip"}
            await ok(admin.post("/imports", data=archive.getvalue(), headers=headers), 202)
    return sent


@pytest.mark.local_storage_only
@pytest.mark.own_database
async def test_every_migration_goes_down_and_up_again_with_data(
    overrides: dict[str, Any],
) -> None:
    """Rows made at head; then, for each revision from the newest, down one
    (every row of every table the older schema has survives), up again (it
    is all still there) and down again; from base, up one at a time: the
    schema is the models'. The revisions are the script directory's,
    whatever they are."""
    chosen = {**overrides, "INLINE_BLOB_BYTES": 1024, "IMPORT_WORKERS": 0}
    settings = load_settings(chosen, environ={})
    sent = await make_representative_rows(create_app(chosen))
    database = Database.from_settings(settings)
    store = build_store(settings)
    order = revisions(settings)
    try:
        at = await snapshot(database)
        columns, blobs = at["blobs"]
        sha256, size, content = (columns.index(c) for c in ("sha256", "size", "content"))
        in_rows = {row[sha256]: row[size] for row in blobs if row[content] is not None}
        assert in_rows and len(in_rows) < len(blobs)  # some in their rows, some in files
        assert sent.keys() <= {row[sha256] for row in blobs}
        assert {t for t, (_, rows) in at.items() if not rows} <= {"quota_reservations"}
        for revision, older in reversed(list(zip(order, ["base", *order], strict=False))):
            down = await migrate_to_revision(settings, database, older)
            assert await schema_revision(database.engine) == (None if older == "base" else older)
            below = await snapshot(database)
            for table, kept, before in rows_by_common_columns(below, at):
                assert kept == before, f"{revision} down: rows of {table} changed"
            if revision == "0009_inline_blobs":
                assert "blob(s) moved from their rows" in down
                for blob, length in in_rows.items():
                    assert await store.digest(blob) == (blob, length)
            await migrate_to_revision(settings, database, revision)
            again = await snapshot(database)
            for table, kept, after in rows_by_common_columns(below, again):
                assert set(kept) <= set(after), f"{revision} up again: rows of {table} lost"
            await migrate_to_revision(settings, database, older)
            assert await snapshot(database) == below, f"{revision}: a second round trip differs"
            at = below
        assert at == {}
        for revision in order:  # up one at a time, as releases came
            await migrate_to_revision(settings, database, revision)

        def diff(connection: Connection) -> list[Any]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))

        async with database.engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await store.close()
        await database.dispose()


@pytest.mark.own_database
async def test_migrate_to_refuses_what_the_older_schema_cannot_hold(
    overrides: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before accounts (0004) a file id is unique: two owners' files under
    one id stop the downgrade, the schema and rows untouched, until one is
    gone. An Idempotency-Key two owners used is dropped by it (without
    owners it would replay one's answer to the other); one used by one
    owner is kept."""
    app = create_app(overrides)
    async with app.test_app() as test_app:
        admin = test_app.test_client()
        keys = {name: bearer(await user_with_key(admin, name)) for name in ("ada", "bob")}
        for name, key in keys.items():
            assert (
                await admin.put("/files/same", data=name.encode(), headers=key)
            ).status_code == 201
            for idempotency_key in ("shared", f"{name}-only"):
                headers = {**key, **multipart_headers(), "Idempotency-Key": idempotency_key}
                body = multipart(part("file", os.urandom(8), "x.bin"))
                assert (await admin.post("/files", data=body, headers=headers)).status_code == 201
    for name, value in overrides.items():
        monkeypatch.setenv(f"QUART_APP_{name}", str(value))
    head = revisions(load_settings(overrides, environ={}))[-1]

    def run(*argv: str) -> int:
        return main(list(argv))

    assert await asyncio.to_thread(run, "migrate", "--to", "0004_idempotency") == 1
    err = capsys.readouterr().err
    assert "files of different owners share ids; cannot downgrade" in err
    assert f"the schema stays at {head}" in err
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.get("/files/same", headers=keys["ada"])).status_code == 200
        assert (await client.delete("/files/same", headers=keys["bob"])).status_code == 204
    assert await asyncio.to_thread(run, "migrate", "--to", "0004_idempotency") == 0
    assert f"database at 0004_idempotency (was {head})" in capsys.readouterr().out
    database = Database.from_settings(load_settings(overrides, environ={}))
    try:
        async with database.engine.connect() as conn:
            records = await conn.execute(text("SELECT owner, key FROM idempotency_records"))
            assert sorted(records) == [("anonymous", "ada-only"), ("anonymous", "bob-only")]
    finally:
        await database.dispose()
    assert await asyncio.to_thread(run, "migrate", "--to", "no-such-revision") == 1
    assert "Can't locate revision identified by 'no-such-revision'" in capsys.readouterr().err
    assert await asyncio.to_thread(run, "migrate") == 0
    assert await asyncio.to_thread(run, "migrate", "--list") == 0
    assert f"* {head}" in capsys.readouterr().out


@pytest.mark.local_storage_only
@pytest.mark.own_database
async def test_undoing_inline_blobs_without_moving_them_refuses(overrides: dict[str, Any]) -> None:
    """Alembic alone (not `migrate --to`, which moves them first) refuses
    to drop the column that holds a blob's only copy, and changes nothing."""
    chosen = {**overrides, "INLINE_BLOB_BYTES": 1024}
    app = create_app(chosen)
    async with app.test_app() as test_app:
        put = await test_app.test_client().put("/files/small", data=b"in a row", headers=bearer())
        assert put.status_code == 201
    settings = load_settings(chosen, environ={})
    database = Database.from_settings(settings)
    try:
        with pytest.raises(RuntimeError, match="moves them to files before it downgrades"):
            await migrate_to(database.engine, settings, "0008_imports")
        assert await schema_revision(database.engine) == revisions(settings)[-1]
        async with database.engine.connect() as conn:
            assert await conn.scalar(text("SELECT content FROM blobs")) == b"in a row"
    finally:
        await database.dispose()
