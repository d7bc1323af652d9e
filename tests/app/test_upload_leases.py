"""The lease on a resumable upload (services/upload_leases.py): two apps on
one database and one storage directory, as two servers are. One writer at
a time, no connection held while a body streams, renewal while it does, and
a PATCH whose lease was taken over commits nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from quart import Quart
from quart.testing import QuartClient, connections
from sqlalchemy import event, text, update

from devtools.quart_client import as_http_connection, as_quart_client
from quart_app import create_app
from quart_app.db.models import Upload
from quart_app.errors import UploadLeaseLost
from quart_app.services.upload_leases import lease_now, take_lease
from quart_app.state import app_state
from tests.app.test_uploads import OCTETS, create, head, patch

pytestmark = pytest.mark.postgresql

# Long enough that no renewal runs while a test looks (the renewal test
# sets its own).
LEASE = 30.0


@asynccontextmanager
async def two_servers(overrides: dict[str, Any], lease: float) -> AsyncIterator[list[Quart]]:
    # No import worker polling the database: the pool is the PATCH's alone.
    settings = {**overrides, "UPLOAD_LEASE_SECONDS": lease, "IMPORT_WORKERS": 0}
    apps = [create_app(settings), create_app(settings)]
    for app in apps:
        await app.startup()
    try:
        yield apps
    finally:
        for app in apps:
            await app.shutdown()


@pytest.fixture
async def servers(overrides: dict[str, Any]) -> AsyncIterator[list[Quart]]:
    async with two_servers(overrides, LEASE) as apps:
        yield apps


def client_of(app: Quart) -> QuartClient:
    return as_quart_client(app.test_client())


def streaming_patch(client: QuartClient, url: str, offset: int) -> connections.TestHTTPConnection:
    return as_http_connection(
        client.request(url, method="PATCH", headers={**OCTETS, "Upload-Offset": str(offset)})
    )


async def upload_row(app: Quart, url: str) -> Upload:
    async with app_state(app).database.sessionmaker() as session:
        row = await session.get(Upload, url.rsplit("/", 1)[1])
    assert row is not None
    return row


async def run_out(app: Quart, url: str) -> None:
    """Make the upload's lease expire now, as it does when its holder's
    renewals stop."""
    database = app_state(app).database
    async with database.sessionmaker() as session, database.writing(session):
        await session.execute(
            update(Upload)
            .where(Upload.id == url.rsplit("/", 1)[1])
            .values(lease_expires_at=lease_now() - timedelta(seconds=1))
        )


async def content(client: QuartClient, url: str) -> bytes:
    response = await client.get(url.replace("/uploads/", "/files/") + "/content")
    assert response.status_code == 200
    return await response.get_data(as_text=False)


async def test_a_patch_holds_a_lease_and_no_connection_while_its_body_streams(
    servers: list[Quart],
) -> None:
    app = servers[0]
    url = await create(client_of(app), 20)
    async with streaming_patch(client_of(app), url, 0) as first:
        await first.send(b"0123456789")
        await asyncio.sleep(0.2)
        held = await upload_row(app, url)
        assert held.lease_owner and held.lease_token == 1
        assert held.lease_expires_at is not None and held.lease_expires_at > lease_now()
        # No pooled connection is out (none in use, so no row lock either).
        assert app_state(app).database.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        await first.send(b"abcdefghij")
        await first.send_complete()
        await first.receive()
    assert first.status_code == 204
    done = await upload_row(app, url)
    assert (done.offset, done.lease_owner, done.lease_expires_at) == (20, None, None)
    assert done.lease_token == 1


async def test_on_sqlite_the_lease_commits_without_an_fsync_and_the_offset_with_one(
    servers: list[Quart],
) -> None:
    """The lease's transaction runs with ``synchronous=NORMAL`` on SQLite
    (no WAL fsync: one less per PATCH), and the offset's commit, like every
    other transaction, with FULL again on the same connection (the one of
    Database.run_write's thread). On PostgreSQL both are durable: no setting
    changes."""
    app = servers[0]
    database = app_state(app).database
    url = await create(client_of(app), 10)
    level: dict[int, str] = {}  # each DBAPI connection's PRAGMA synchronous
    updates: list[tuple[str, str]] = []
    reads: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        key = id(conn.connection.dbapi_connection)
        if statement.startswith("PRAGMA synchronous="):
            level[key] = statement.split("=", 1)[1]
        elif statement.startswith("UPDATE uploads"):
            updates.append((level.get(key, "FULL"), statement))
        elif statement.startswith("SELECT") and "FROM uploads" in statement:
            reads.append(statement)

    engines = [database.engine.sync_engine]
    if database.thread_engine is not None:
        engines.append(database.thread_engine)
    for engine in engines:
        event.listen(engine, "before_cursor_execute", seen)
    try:
        for offset in (0, 5):
            assert (await patch(client_of(app), url, offset, b"12345")).status_code == 204
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", seen)
    leases = [sync for sync, statement in updates if "lease_token=" in statement]
    offsets = [sync for sync, statement in updates if "received=" in statement]
    assert len(leases) == 2 and len(offsets) == 2, updates
    assert leases == ["NORMAL" if database.is_sqlite else "FULL"] * 2
    assert offsets == ["FULL"] * 2
    # The row is not read on its own: the leases' UPDATEs (whose WHERE holds
    # the checks: access, offset, live, not completed) and the first
    # offset's UPDATE (fenced by the token) return it. Only the PATCH that
    # completes the upload reads it, under the lock, to make it a file.
    assert len(reads) == 1, reads
    returning = ["RETURNING" in statement for _, statement in updates]
    assert returning[:3] == [True, True, True] and not any(returning[3:]), updates
    if not database.is_sqlite:
        assert not level
        return
    # The transactions after them, on whichever connection, are FULL.
    for _ in range(3):
        async with database.sessionmaker() as session:
            assert await session.scalar(text("PRAGMA synchronous")) == 2
    assert await database.run_write(lambda c: c.scalar(text("PRAGMA synchronous"))) == 2


async def test_a_patch_its_checks_refuse_takes_no_lease(servers: list[Quart]) -> None:
    """Offset, length and completion are checked on the row read under the
    lock, in the transaction that would take the lease: refused, it is
    rolled back and the lease is as it was."""
    app = servers[0]
    client = client_of(app)
    url = await create(client, 10)
    assert (await patch(client, url, 0, b"12345")).status_code == 204
    before = await upload_row(app, url)
    wrong_offset = await patch(client, url, 3, b"67890")
    new_length = await patch(client, url, 5, b"67890", **{"Upload-Length": "11"})
    assert (wrong_offset.status_code, new_length.status_code) == (409, 400)
    after = await upload_row(app, url)
    assert (after.lease_token, after.lease_owner, after.offset) == (before.lease_token, None, 5)
    assert (await patch(client, url, 5, b"67890")).status_code == 204
    # Complete: an empty PATCH at its end is answered as the last one was,
    # and takes no lease either.
    repeat = await patch(client, url, 10, b"")
    assert (repeat.status_code, repeat.headers["Upload-Offset"]) == (204, "10")
    done = await upload_row(app, url)
    assert (done.lease_token, done.lease_owner) == (before.lease_token + 1, None)


async def test_a_patch_renews_its_lease_however_slow_its_client(
    overrides: dict[str, Any],
) -> None:
    """Bytes trickling in for over two leases' worth of time: the lease is
    renewed in the background, so a PATCH on the other server meanwhile is
    refused (423, after its wait) and the slow one completes."""
    # Renewed every 0.5 s: a renewal may come a whole second late (a busy
    # machine) before the lease runs out.
    async with two_servers(overrides, 1.5) as (first_app, second_app):
        url = await create(client_of(first_app), 12)
        async with streaming_patch(client_of(first_app), url, 0) as slow:
            other = None
            for piece in range(6):
                await slow.send(b"ab")
                if piece == 1:
                    other = asyncio.ensure_future(patch(client_of(second_app), url, 0, b"x" * 12))
                await asyncio.sleep(0.6)
            assert other is not None
            refused = await other
            await slow.send_complete()
            await slow.receive()
        assert slow.status_code == 204
        assert refused.status_code == 423
        assert refused.content_type == "application/problem+json"
        assert await content(client_of(second_app), url) == b"ab" * 6


async def test_a_patch_waiting_for_the_lease_sees_the_offset_move(servers: list[Quart]) -> None:
    """The second PATCH waits for the first to let go; the first committed
    more bytes meanwhile, so the second is a 409 and cuts nothing back."""
    first_app, second_app = servers
    url = await create(client_of(first_app), 20)
    async with streaming_patch(client_of(first_app), url, 0) as first:
        await first.send(b"0123456789")
        await asyncio.sleep(0.2)
        late = asyncio.ensure_future(patch(client_of(second_app), url, 0, b"z" * 10))
        await asyncio.sleep(0.3)
        await first.send_complete()
        await first.receive()
    answer = await late
    assert first.status_code == 204
    assert answer.status_code == 409
    assert (await answer.get_json())["type"].endswith(":offset-mismatch")
    assert (await head(client_of(second_app), url)).headers["Upload-Offset"] == "10"
    assert (await patch(client_of(second_app), url, 10, b"ABCDEFGHIJ")).status_code == 204
    assert await content(client_of(first_app), url) == b"0123456789ABCDEFGHIJ"


@pytest.mark.local_storage_only
async def test_a_patch_whose_lease_was_taken_over_commits_nothing(servers: list[Quart]) -> None:
    """The first server's renewals stop holding (here: its lease is made to
    run out in the database, as when its process stalls past it); the
    other server takes the lease over (on disk its writer then finds the
    file still open: 423; on S3 it writes, tests/e2e/test_three_servers.py).
    The first PATCH's next check finds its token stale: 409, offset kept."""
    first_app, second_app = servers
    url = await create(client_of(first_app), 20)
    async with streaming_patch(client_of(first_app), url, 0) as stalled:
        await stalled.send(b"0123456789")
        await asyncio.sleep(0.2)
        await run_out(second_app, url)
        taker = await patch(client_of(second_app), url, 0, b"z" * 20)
        assert taker.status_code == 423
        assert (await upload_row(second_app, url)).lease_token == 2
        await stalled.send(b"abcdefghij")
        await stalled.send_complete()
        body = await stalled.receive()
    assert stalled.status_code == 409
    problem = json.loads(body)
    assert problem["type"] == "urn:quart-app:problem:upload-lease-lost"
    assert (await head(client_of(first_app), url)).headers["Upload-Offset"] == "0"
    data = b"ABCDEFGHIJKLMNOPQRST"
    assert (await patch(client_of(second_app), url, 0, data)).status_code == 204
    file = await (await client_of(first_app).get(url.replace("/uploads/", "/files/"))).get_json()
    assert file["sha256"] == hashlib.sha256(data).hexdigest()
    assert await content(client_of(first_app), url) == data


async def test_an_offset_commit_is_fenced_by_the_lease_token(servers: list[Quart]) -> None:
    """The commit's check itself: a lease taken over after expiry makes the
    first holder's settle refuse, and its renewal fail."""
    app = servers[0]
    database = app_state(app).database
    url = await create(client_of(app), 5)
    upload_id = url.rsplit("/", 1)[1]
    first = await take_lease(database, upload_id, 0, 0.05)
    await first.stop_renewing()  # its process stalls
    await asyncio.sleep(0.1)
    second = await take_lease(database, upload_id, 0, LEASE)
    assert (first.token, second.token) == (1, 2)
    async with database.sessionmaker() as session, database.writing(session):
        row = await session.get(Upload, upload_id, with_for_update=True)
        assert row is not None
        with pytest.raises(UploadLeaseLost):
            first.settle(row)
        second.settle(row)
    second.settled()
    await second.release()
    assert not await first.still_held()
    await first.release()
    row = await upload_row(app, url)
    assert row.lease_owner is None and row.lease_expires_at is None


async def test_delete_waits_for_no_lease_but_refuses_a_live_one(servers: list[Quart]) -> None:
    first_app, second_app = servers
    url = await create(client_of(first_app), 20)
    async with streaming_patch(client_of(first_app), url, 0) as first:
        await first.send(b"0123456789")
        await asyncio.sleep(0.2)
        refused = await client_of(second_app).delete(url, headers={"Tus-Resumable": "1.0.0"})
        assert refused.status_code == 423
        await first.send_complete()
        await first.receive()
    assert first.status_code == 204
    # A lease that ran out (its holder died) does not stop a DELETE.
    database = app_state(first_app).database
    dead = await take_lease(database, url.rsplit("/", 1)[1], 10, 0.05)
    await dead.stop_renewing()
    await asyncio.sleep(0.1)
    gone = await client_of(second_app).delete(url, headers={"Tus-Resumable": "1.0.0"})
    assert gone.status_code == 204
    assert (await head(client_of(first_app), url)).status_code == 404
    await dead.release()


async def test_writers_queued_for_the_write_lock_hold_no_connection(
    servers: list[Quart],
) -> None:
    """A lease or offset written on a connection of its own (no session)
    takes it from the pool only once this process's write lock is held, as
    a session's writer does: writers queued behind a long transaction do
    not empty the pool that reads and the lock's holder need."""
    database = app_state(servers[0]).database
    if not database.is_sqlite:
        pytest.skip("PostgreSQL has no process write lock: writers wait on the database")
    pool = database.engine.pool
    url = await create(client_of(servers[0]), 10)
    upload_id = url.rsplit("/", 1)[1]
    queued = 20  # more than the pool's 5 + 10 overflow

    async def bump() -> None:
        async with database.writing_connection() as connection:
            await connection.execute(
                update(Upload).where(Upload.id == upload_id).values(lease_owner="queued")
            )

    async with database.sessionmaker() as session, database.writing(session):
        await session.execute(text("SELECT 1"))
        held = pool.checkedout()  # type: ignore[attr-defined]
        writers = [asyncio.ensure_future(bump()) for _ in range(queued)]
        await asyncio.sleep(0.2)
        assert not any(writer.done() for writer in writers)
        assert pool.checkedout() == held  # type: ignore[attr-defined]
    await asyncio.gather(*writers)
    assert pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_claim_that_passes_where_its_check_refuses_leaves_nothing_taken(
    servers: list[Quart],
) -> None:
    """The one-statement take (a claim: the checks as SQL) is checked again
    by the PATCH's own check; should the two ever part, the check decides
    and the lease the statement took is let go."""
    app = servers[0]
    database = app_state(app).database
    url = await create(client_of(app), 10)
    upload_id = url.rsplit("/", 1)[1]

    class Refused(Exception):
        pass

    def refuse(upload: Upload) -> None:
        raise Refused(upload.id)

    with pytest.raises(Refused):
        await take_lease(database, upload_id, 0, LEASE, refuse, claim=[])
    async with database.sessionmaker() as session:
        upload = await session.get(Upload, upload_id)
    assert upload is not None and upload.lease_owner is None and upload.lease_expires_at is None
    assert upload.lease_token == 1  # it was taken (then let go)
    lease = await take_lease(database, upload_id, 0, LEASE, claim=[])
    assert lease.token == 2
    await lease.release()
