"""Three Hypercorn servers sharing one PostgreSQL database and one S3 store
(a real SeaweedFS), a client spreading its requests round-robin, as behind
a proxy: uniqueness, Idempotency-Key replays, tus PATCHes alternating
between servers, the upload lease surviving `kill -9` (expiry, then
takeover by another server) and `SIGSTOP` (a stalled writer's commit is
fenced off), paging, no lost or duplicated create, and the operator's
check clean at the end (issue 16, items 4 and 5)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from devtools.auth import bearer, bearer_line
from devtools.server import RunningServer, start_servers

MiB = 1024 * 1024
PART = 5 * MiB
LEASE_SECONDS = 4.0  # renewed every 1.33 s: a dead holder keeps it 2.7-4 s
PUBLIC = "http://files.test"
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}


@pytest.fixture
def servers(
    own_postgres_url: str, s3_env: dict[str, str], tmp_path: Path
) -> Iterator[list[RunningServer]]:
    shared = {
        **s3_env,
        "QUART_APP_DATABASE_URL": own_postgres_url,
        "QUART_APP_SECRET_KEY": "shared-secret",
        # One origin for all three, as behind a proxy: a stored response
        # replays only to the origin it answered.
        "QUART_APP_PUBLIC_URL": PUBLIC,
        "QUART_APP_S3_PART_BYTES": str(PART),
        "QUART_APP_UPLOAD_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    # Three interpreters starting at once on a busy 2-core machine: a wider
    # wait than one server's.
    running = start_servers([tmp_path / f"server{i}" for i in range(3)], shared, timeout=60)
    try:
        yield running
    finally:
        for server in running:
            if server.process is not None and server.process.poll() is None:
                os.kill(server.process.pid, signal.SIGCONT)  # if a failure left it stopped
            server.stop()


class RoundRobin:
    """The client's view: each request to the next live server."""

    def __init__(self, servers: list[RunningServer], http: httpx.AsyncClient) -> None:
        self.servers = servers
        self.http = http
        self.turn = 0
        self.down: set[int] = set()  # ports of servers out of rotation

    def next(self) -> RunningServer:
        for _ in range(len(self.servers)):
            server = self.servers[self.turn % len(self.servers)]
            self.turn += 1
            if server.process is not None and server.port not in self.down:
                return server
        raise AssertionError("no server is running")

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.request(method, self.next().url + path, **kwargs)


def path_of(url: str) -> str:
    return httpx.URL(url).raw_path.decode()


async def users_uniqueness_idempotency_paging(rr: RoundRobin) -> None:
    # Twenty concurrent creates of one email, spread over the servers: one 201.
    same = await asyncio.gather(
        *(
            rr.request("POST", "/users", json={"name": "A", "email": "a@example.com"})
            for _ in range(20)
        )
    )
    assert sorted(r.status_code for r in same) == [201] + [409] * 19
    winner = next(r for r in same if r.status_code == 201)
    for lost in (r for r in same if r.status_code == 409):
        assert lost.headers["Content-Type"] == "application/problem+json"
        assert lost.json()["existing"] == winner.headers["Location"]

    # Thirty distinct creates, each sent twice with one Idempotency-Key to
    # two different servers at once, then replayed from the third: thirty
    # users, none lost, none twice, every replay the first answer.
    async def create(i: int) -> tuple[httpx.Response, ...]:
        body = {"name": f"U{i}", "email": f"u{i}@example.com"}
        key = {"Idempotency-Key": f"create-{i}"}
        twins = await asyncio.gather(
            *(rr.request("POST", "/users", json=body, headers=key) for _ in range(2))
        )
        replay = await rr.request("POST", "/users", json=body, headers=key)
        return (*twins, replay)

    answers = await asyncio.gather(*(create(i) for i in range(30)))
    ids: set[int] = set()
    for first, second, replay in answers:
        done = [r for r in (first, second) if r.status_code == 201]
        # A twin still running answers 409 (idempotency-key-in-use) or, if
        # the first finished, the replay.
        assert done and all(r.status_code in (201, 409) for r in (first, second))
        assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
        assert all(r.content == replay.content for r in done)
        ids.add(replay.json()["id"])
    assert len(ids) == 30
    changed = await rr.request(
        "POST", "/users", json={"name": "Other", "email": "u0@example.com"},
        headers={"Idempotency-Key": "create-0"},
    )  # fmt: skip
    assert changed.status_code == 422
    # Paging: each page from the next server, following the signed cursor.
    seen: list[int] = []
    url: str | None = "/users?limit=7"
    while url is not None:
        page = await rr.request("GET", url)
        assert page.status_code == 200, page.text
        seen += [user["id"] for user in page.json()["items"]]
        url = None if page.json()["next"] is None else path_of(page.json()["next"])
    assert len(seen) == len(set(seen)) == 31
    assert ids <= set(seen)


async def tus_alternating(rr: RoundRobin, data: bytes) -> str:
    created = await rr.request("POST", "/uploads", headers={**TUS, "Upload-Length": str(len(data))})
    assert created.status_code == 201
    path = path_of(created.headers["Location"])
    # Pieces not aligned to the part size: tails cross servers too.
    step = 1_700_000
    for offset in range(0, len(data), step):
        patched = await rr.request(
            "PATCH", path, content=data[offset : offset + step],
            headers={**OCTETS, "Upload-Offset": str(offset)},
        )  # fmt: skip
        assert patched.status_code == 204, patched.text
    file_id = path.rsplit("/", 1)[1]
    for _ in range(3):  # every server reports and serves the same bytes
        assert (await rr.request("GET", f"/files/{file_id}")).json()["sha256"] == sha(data)
    content = await rr.request("GET", f"/files/{file_id}/content")
    assert sha(content.content) == sha(data)
    return file_id


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def open_patch(
    server: RunningServer, path: str, offset: int, length: int, first: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A PATCH of ``length`` bytes whose first ones are sent, the rest not yet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        (
            f"PATCH {path} HTTP/1.1\r\nHost: files.test\r\n{bearer_line()}"
            "Connection: close\r\nTus-Resumable: 1.0.0\r\n"
            "Content-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {offset}\r\nContent-Length: {length}\r\n\r\n"
        ).encode()
        + first
    )
    await writer.drain()
    return reader, writer


class Uploads:
    """The uploads table, read straight from PostgreSQL."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def lease(self, upload_id: str) -> asyncpg.Record:
        row = await self.connection.fetchrow(
            "SELECT received, lease_owner, lease_token, lease_expires_at"
            " FROM uploads WHERE id = $1",
            upload_id,
        )
        assert row is not None
        return row

    async def wait_for_holder(self, upload_id: str, pid: int) -> asyncpg.Record:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            row = await self.lease(upload_id)
            if row["lease_owner"] is not None and row["lease_owner"].endswith(f" {pid}"):
                return row
            await asyncio.sleep(0.05)
        raise AssertionError("the PATCH never took the lease")


async def wait_for_object(s3: Any, bucket: str, key: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        listed = await s3.list_objects_v2(Bucket=bucket, Prefix=key)
        if listed.get("KeyCount", 0):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key} never appeared")


def expires_in(row: asyncpg.Record) -> float:
    expires: datetime = row["lease_expires_at"].replace(tzinfo=UTC)
    return (expires - datetime.now(UTC)).total_seconds()


async def resume_after_kill_9(
    rr: RoundRobin, uploads: Uploads, data: bytes, s3: Any, bucket: str, prefix: str
) -> tuple[RunningServer, str]:
    """The server holding an upload is killed mid-PATCH with a part already
    in the store past the committed offset. Until its lease runs out the
    upload is 423 elsewhere; then another server takes it over, writes
    from the committed offset, and the upload completes with the right
    bytes."""
    created = await rr.request("POST", "/uploads", headers={**TUS, "Upload-Length": str(len(data))})
    path = path_of(created.headers["Location"])
    upload_id = path.rsplit("/", 1)[1]
    first = await rr.request(
        "PATCH", path, content=data[:MiB], headers={**OCTETS, "Upload-Offset": "0"}
    )
    assert first.status_code == 204
    victim = rr.next()
    assert victim.process is not None
    _, writer = await open_patch(victim, path, MiB, len(data) - MiB, data[MiB : 7 * MiB])
    held = await uploads.wait_for_holder(upload_id, victim.process.pid)
    # Part 1 (bytes past the committed offset) is in the store.
    await wait_for_object(s3, bucket, f"{prefix}/partial/{upload_id}/part-00001")
    rr.down.add(victim.port)
    victim.stop(sig=signal.SIGKILL)
    writer.close()
    killed_at = time.monotonic()
    victim.spawn()  # it restarts (crash recovery) while the lease runs out
    left = expires_in(await uploads.lease(upload_id))
    assert 0 < left <= LEASE_SECONDS
    assert (await rr.request("HEAD", path, headers=TUS)).headers["Upload-Offset"] == str(MiB)
    attempts: list[int] = []
    while True:
        started = time.monotonic()
        retry = await rr.request(
            "PATCH",
            path,
            content=data[MiB : 2 * MiB],
            headers={**OCTETS, "Upload-Offset": str(MiB)},
        )
        attempts.append(retry.status_code)
        if retry.status_code == 204:
            break
        assert retry.status_code == 423, retry.text
        assert retry.headers["Content-Type"] == "application/problem+json"
        # Refused only while the dead server's lease could still be live.
        assert started - killed_at < left + 1.0
        assert time.monotonic() - killed_at < LEASE_SECONDS + 10
    if left > 2.5:  # the first try waited 2 s, all within the lease
        assert attempts[0] == 423
    assert (await uploads.lease(upload_id))["lease_token"] == held["lease_token"] + 1
    for offset in range(2 * MiB, len(data), 3 * MiB):
        patched = await rr.request(
            "PATCH", path, content=data[offset : offset + 3 * MiB],
            headers={**OCTETS, "Upload-Offset": str(offset)},
        )  # fmt: skip
        assert patched.status_code == 204, patched.text
    stored = await rr.request("GET", f"/files/{upload_id}")
    assert stored.json()["sha256"] == sha(data)
    assert sha((await rr.request("GET", f"/files/{upload_id}/content")).content) == sha(data)
    return victim, upload_id


async def fenced_after_sigstop(
    rr: RoundRobin, uploads: Uploads, data: bytes, s3: Any, bucket: str, prefix: str
) -> str:
    """A server stalls (SIGSTOP) mid-PATCH past its lease; another takes the
    upload over and completes it. Woken, the stalled one finds its fencing
    token stale before it writes or commits anything more: 409
    upload-lease-lost, and the file is the other's bytes."""
    created = await rr.request("POST", "/uploads", headers={**TUS, "Upload-Length": str(len(data))})
    path = path_of(created.headers["Location"])
    upload_id = path.rsplit("/", 1)[1]
    staller = rr.next()
    assert staller.process is not None
    junk = b"J" * len(data)  # what the stalled PATCH sends: never to be seen
    reader, writer = await open_patch(staller, path, 0, len(data), junk[: 6 * MiB])
    await uploads.wait_for_holder(upload_id, staller.process.pid)
    await wait_for_object(s3, bucket, f"{prefix}/partial/{upload_id}/part-00001")
    os.kill(staller.process.pid, signal.SIGSTOP)
    try:
        # The stalled server's lease runs out (it cannot renew it).
        await asyncio.sleep(max(0.0, expires_in(await uploads.lease(upload_id))) + 0.1)
        taker = rr.next()
        if taker is staller:
            taker = rr.next()
        took = await rr.http.patch(
            taker.url + path, content=data, headers={**OCTETS, "Upload-Offset": "0"}
        )
        assert took.status_code == 204, took.text
    finally:
        os.kill(staller.process.pid, signal.SIGCONT)
    try:
        writer.write(junk[6 * MiB :])
        await writer.drain()
    except ConnectionError:
        pass  # it answered before reading the rest
    answer = await asyncio.wait_for(reader.read(), timeout=20)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 409" in status_line, answer[:500]
    assert b"urn:quart-app:problem:upload-lease-lost" in rest
    stored = await rr.request("GET", f"/files/{upload_id}")
    assert stored.json()["sha256"] == sha(data)
    assert sha((await rr.request("GET", f"/files/{upload_id}/content")).content) == sha(data)
    return upload_id


def test_three_servers_on_postgresql_and_s3(
    servers: list[RunningServer], own_postgres_url: str, s3_env: dict[str, str]
) -> None:
    from devtools.seaweed import BUCKET

    prefix = s3_env["QUART_APP_STORAGE_URL"].removeprefix(f"s3://{BUCKET}/")

    async def run() -> RunningServer:
        import aioboto3

        connection = await asyncpg.connect(own_postgres_url.replace("+asyncpg", ""))
        session = aioboto3.Session(
            aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
            region_name=s3_env["AWS_REGION"],
        )
        try:
            async with (
                httpx.AsyncClient(timeout=60, headers=bearer()) as http,
                session.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]) as s3,
            ):
                rr = RoundRobin(servers, http)
                uploads = Uploads(connection)
                await users_uniqueness_idempotency_paging(rr)
                await tus_alternating(rr, os.urandom(3 * PART + 12345))
                await fenced_after_sigstop(
                    rr, uploads, os.urandom(PART + MiB + 777), s3, BUCKET, prefix
                )
                victim, _ = await resume_after_kill_9(
                    rr, uploads, os.urandom(2 * PART + 4321), s3, BUCKET, prefix
                )
                return victim
        finally:
            await connection.close()

    victim = asyncio.run(run())
    # The killed server is back (crash recovery on the shared store) and
    # serves; the operator's check finds all well.
    victim.wait_until_serving(60)
    with httpx.Client(base_url=victim.url, headers=bearer(), timeout=30) as http:
        assert http.get("/users?limit=1").status_code == 200
    checked = subprocess.run(
        [sys.executable, "-m", "quart_app", "check"],
        env=victim.env, capture_output=True, text=True, cwd=victim.root, timeout=120,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "all is well" in checked.stdout
