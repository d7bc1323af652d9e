"""Two servers on one database and one storage directory: two apps in this
process, each with its own engine, pool, write lock and group commits, as
two Hypercorn servers have. What one server's locks in memory cannot
promise, the database must: one winner for one email, one run for one
Idempotency-Key, one blob for identical bytes, one creator for one PUT id,
and no file whose bytes a concurrent delete removed.

On SQLite the two apps take turns at the file's write lock; on PostgreSQL
they write at once, and the row and advisory locks are what hold
(tests/e2e/test_postgresql.py does the same with real servers)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart, Response
from quart.testing import QuartClient

from devtools.form_data import multipart, multipart_headers, part
from devtools.quart_client import as_quart_client
from devtools.stored import blob_files, count_rows, temp_files
from quart_app import create_app
from quart_app.db.models import Blob, File, User
from quart_app.ops.integrity import check
from quart_app.state import app_state

pytestmark = pytest.mark.postgresql

ROUNDS = 20


@pytest.fixture
async def servers(overrides: dict[str, Any]) -> AsyncIterator[list[Quart]]:
    apps = [create_app(overrides), create_app(overrides)]
    for app in apps:
        await app.startup()
    try:
        yield apps
    finally:
        for app in apps:
            await app.shutdown()


def clients(servers: list[Quart]) -> list[QuartClient]:
    return [as_quart_client(app.test_client()) for app in servers]


def alternating(servers: list[Quart], count: int) -> list[QuartClient]:
    both = clients(servers)
    return [both[i % 2] for i in range(count)]


async def upload(client: QuartClient, data: bytes, name: str = "a.bin") -> Response:
    body = multipart(part("file", data, name))
    return await client.post("/files", data=body, headers=multipart_headers())


async def test_one_email_created_at_once_on_both_servers_has_one_winner(
    servers: list[Quart],
) -> None:
    responses = await asyncio.gather(
        *(
            client.post(
                "/users",
                json={
                    "name": f"N{i}",
                    "email": "Same@Example.com" if i % 2 else "same@example.COM",
                },
            )
            for i, client in enumerate(alternating(servers, ROUNDS))
        )
    )
    assert sorted(r.status_code for r in responses) == [201] + [409] * (ROUNDS - 1)
    winner = next(r for r in responses if r.status_code == 201)
    for response in responses:
        if response.status_code == 409:
            assert (await response.get_json())["existing"] == winner.headers["Location"]
    assert await count_rows(servers[0], User) == 1


async def test_one_idempotency_key_on_both_servers_runs_once(servers: list[Quart]) -> None:
    body = {"name": "Ada", "email": "ada@example.com"}
    headers = {"Idempotency-Key": "one-key"}
    responses = await asyncio.gather(
        *(c.post("/users", json=body, headers=headers) for c in alternating(servers, ROUNDS))
    )
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 409}, statuses
    created = [r for r in responses if r.status_code == 201]
    assert len({r.headers["Location"] for r in created}) == 1
    assert await count_rows(servers[0], User) == 1
    # Once it has run, either server replays it.
    for client in clients(servers):
        again = await client.post("/users", json=body, headers=headers)
        assert again.status_code == 201
        assert again.headers["Idempotent-Replayed"] == "true"


async def test_identical_uploads_on_both_servers_store_one_blob(
    servers: list[Quart], overrides: dict[str, Any]
) -> None:
    data = os.urandom(50_000)
    responses = await asyncio.gather(
        *(upload(c, data, f"{i}.bin") for i, c in enumerate(alternating(servers, ROUNDS)))
    )
    assert [r.status_code for r in responses] == [201] * ROUNDS
    storage = Path(overrides["STORAGE_DIR"])
    assert await count_rows(servers[0], File) == ROUNDS
    assert await count_rows(servers[0], Blob) == 1
    assert [p.name for p in blob_files(storage)] == [hashlib.sha256(data).hexdigest()]
    assert temp_files(storage) == []


async def test_one_new_id_put_on_both_servers_is_created_once(servers: list[Quart]) -> None:
    headers = {"Content-Type": "application/octet-stream", "If-None-Match": "*"}
    responses = await asyncio.gather(
        *(
            c.put("/files/contested", data=f"body {i}".encode(), headers=headers)
            for i, c in enumerate(alternating(servers, ROUNDS))
        )
    )
    assert sorted(r.status_code for r in responses) == [201] + [412] * (ROUNDS - 1)
    assert await count_rows(servers[0], File) == 1


async def test_deletes_racing_uploads_of_the_same_bytes_never_lose_them(
    servers: list[Quart],
) -> None:
    """A delete on one server drops the last file with some bytes while an
    upload of the same bytes on the other relies on them: every file left
    must have its bytes."""
    first, second = clients(servers)
    data = os.urandom(20_000)
    for round_ in range(8):
        gone = await first.put(f"/files/r{round_}", data=data)
        assert gone.status_code == 201
        deleted, uploaded = await asyncio.gather(
            first.delete(f"/files/r{round_}"), upload(second, data, f"u{round_}")
        )
        assert (deleted.status_code, uploaded.status_code) == (204, 201)
        content = await second.get(f"/files/{(await uploaded.get_json())['id']}/content")
        assert content.status_code == 200
    report = await check(
        app_state(servers[0]).database, app_state(servers[0]).store, 60.0, repair=False
    )
    assert report.clean, report
    assert report.checked_files == 8
