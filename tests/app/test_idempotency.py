"""Idempotency-Key on POST /users, POST /files and POST /uploads."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.testing import QuartClient

from devtools.form_data import multipart, multipart_headers, part
from devtools.quart_client import as_http_connection, as_quart_client
from devtools.stored import blob_files, count_rows, temp_files
from quart_app.db.models import Blob, File, IdempotencyRecord, Upload, User, utc_now
from quart_app.services.idempotency import purge_expired
from quart_app.state import app_state

# Also on PostgreSQL by default (tests/conftest.py).
pytestmark = pytest.mark.postgresql

KEY = {"Idempotency-Key": '"order-42"'}


async def test_bad_key_is_a_400_problem(app: Quart, client: QuartClient) -> None:
    response = await client.post(
        "/users", json={"name": "A", "email": "a@example.com"}, headers={"Idempotency-Key": ""}
    )
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    assert await count_rows(app, User) == 0


async def test_replay_returns_the_same_response_and_creates_nothing(
    app: Quart, client: QuartClient
) -> None:
    body = {"name": "Ada", "email": "ada@example.com"}
    first = await client.post("/users", json=body, headers=KEY)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    again = await client.post("/users", json=body, headers={"Idempotency-Key": "order-42"})
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert await again.get_data() == await first.get_data()
    assert await count_rows(app, User) == 1


async def test_same_key_other_payload_is_422(app: Quart, client: QuartClient) -> None:
    await client.post("/users", json={"name": "Ada", "email": "ada@example.com"}, headers=KEY)
    other = await client.post(
        "/users", json={"name": "Bob", "email": "bob@example.com"}, headers=KEY
    )
    assert other.status_code == 422
    assert other.content_type == "application/problem+json"
    assert await count_rows(app, User) == 1


async def test_a_rejected_request_is_not_recorded(app: Quart, client: QuartClient) -> None:
    bad = await client.post("/users", json={"name": "", "email": "x"}, headers=KEY)
    assert bad.status_code == 400
    await client.post("/users", json={"name": "T", "email": "taken@example.com"})
    taken = await client.post(
        "/users", json={"name": "T", "email": "taken@example.com"}, headers=KEY
    )
    assert taken.status_code == 409
    fixed = await client.post(
        "/users", json={"name": "Ada", "email": "ada@example.com"}, headers=KEY
    )
    assert fixed.status_code == 201
    assert await count_rows(app, IdempotencyRecord) == 1


async def test_fifty_concurrent_requests_with_one_key_create_one_user(
    app: Quart, client: QuartClient
) -> None:
    body = {"name": "Ada", "email": "ada@example.com"}
    responses = await asyncio.gather(
        *(client.post("/users", json=body, headers=KEY) for _ in range(50))
    )
    statuses = [r.status_code for r in responses]
    assert all(s in (201, 409) for s in statuses), statuses
    originals = [r for r in responses if r.status_code == 201]
    assert len([r for r in originals if "Idempotent-Replayed" not in r.headers]) == 1
    bodies = {await r.get_data() for r in originals}
    assert len(bodies) == 1
    assert await count_rows(app, User) == 1


async def test_upload_replay_consumes_the_body_and_stores_no_second_blob(
    app: Quart, client: QuartClient, overrides: dict[str, Any]
) -> None:
    data = os.urandom(200_000)
    form = multipart(part("file", data, "a.bin"))
    first = await client.post("/files", data=form, headers={**multipart_headers(), **KEY})
    assert first.status_code == 201
    again = await client.post("/files", data=form, headers={**multipart_headers(), **KEY})
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.get_data() == await first.get_data()
    assert await count_rows(app, File) == 1
    assert await count_rows(app, Blob) == 1
    storage = Path(overrides["STORAGE_DIR"])
    assert len(blob_files(storage)) == 1
    assert temp_files(storage) == []
    # The last byte flipped: os.urandom ends in b"!" one time in 256, which
    # made "changed" the same bytes (CI on 2026-12-03 replayed it, 201).
    changed = multipart(part("file", data[:-1] + bytes([data[-1] ^ 1]), "a.bin"))
    other = await client.post("/files", data=changed, headers={**multipart_headers(), **KEY})
    assert other.status_code == 422
    assert await count_rows(app, File) == 1


async def test_batch_and_raw_uploads_replay(app: Quart, client: QuartClient) -> None:
    form = multipart(part("file", b"one", "1.txt"), part("file", b"two", "2.txt"))
    first = await client.post("/files", data=form, headers={**multipart_headers(), **KEY})
    again = await client.post("/files", data=form, headers={**multipart_headers(), **KEY})
    assert again.headers["Location"] == first.headers["Location"]
    raw_headers = {"Content-Disposition": 'attachment; filename="r.txt"', "Idempotency-Key": "r"}
    raw = await client.post("/files", data=b"raw", headers=raw_headers)
    raw_again = await client.post("/files", data=b"raw", headers=raw_headers)
    assert raw_again.headers["Location"] == raw.headers["Location"]
    assert await count_rows(app, File) == 3


async def test_tus_creation_replays(app: Quart, client: QuartClient) -> None:
    headers = {"Tus-Resumable": "1.0.0", "Upload-Length": "10", **KEY}
    first = await client.post("/uploads", headers=headers)
    again = await client.post("/uploads", headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await count_rows(app, Upload) == 1
    with_body = {
        "Tus-Resumable": "1.0.0", "Upload-Length": "10", "Idempotency-Key": "with-body",
        "Content-Type": "application/offset+octet-stream",
    }  # fmt: skip
    created = await client.post("/uploads", data=b"12345", headers=with_body)
    replayed = await client.post("/uploads", data=b"12345", headers=with_body)
    assert created.headers["Upload-Offset"] == replayed.headers["Upload-Offset"] == "5"
    assert replayed.headers["Location"] == created.headers["Location"]
    assert await count_rows(app, Upload) == 2


async def test_a_running_request_makes_its_twin_409(app: Quart, client: QuartClient) -> None:
    async with as_http_connection(client.request(
        "/files", method="POST",
        headers={"Content-Disposition": 'attachment; filename="slow"', **KEY},
    )) as slow:  # fmt: skip
        await slow.send(b"first half ")
        await asyncio.sleep(0.2)
        twin = await client.post(
            "/files", data=b"x", headers={"Content-Disposition": 'attachment; filename="t"', **KEY}
        )
        assert twin.status_code == 409
        assert twin.content_type == "application/problem+json"
        await slow.send(b"second half")
        await slow.send_complete()
        await slow.receive()
    assert slow.status_code == 201


async def test_a_lapsed_claim_can_be_taken_over(app: Quart, client: QuartClient) -> None:
    database = app_state(app).database
    async with database.sessionmaker() as session, database.writing(session):
        session.add(
            IdempotencyRecord(
                owner="anonymous", key="order-42", lock_token="dead-worker",
                locked_until=utc_now() - timedelta(seconds=1), created_at=utc_now(),
            )
        )  # fmt: skip
    response = await client.post(
        "/users", json={"name": "A", "email": "a@example.com"}, headers=KEY
    )
    assert response.status_code == 201


async def test_records_expire_and_are_purged(app: Quart, client: QuartClient) -> None:
    await client.post("/users", json={"name": "A", "email": "a@example.com"}, headers=KEY)
    database = app_state(app).database
    assert await purge_expired(database, utc_now() - timedelta(hours=24)) == 0
    assert await purge_expired(database, utc_now() + timedelta(seconds=1)) == 1
    assert await count_rows(app, IdempotencyRecord) == 0
    again = await client.post("/users", json={"name": "A", "email": "a@example.com"}, headers=KEY)
    assert again.status_code == 409  # a new request: the email is taken


async def test_openapi_documents_the_header_on_every_create(client: QuartClient) -> None:
    spec = await (await client.get("/openapi.json")).get_json()
    for path in ("/users", "/files", "/uploads"):
        names = {p["name"].lower() for p in spec["paths"][path]["post"].get("parameters", [])}
        assert "idempotency-key" in names, path


async def test_the_background_sweep_purges_expired_records(overrides: dict[str, Any]) -> None:
    from quart_app import create_app

    app = create_app({**overrides, "IDEMPOTENCY_TTL_SECONDS": 0.5, "UPLOAD_SWEEP_SECONDS": 0.2})
    async with app.test_app() as test_app:
        client = as_quart_client(test_app.test_client())
        await client.post("/users", json={"name": "A", "email": "a@example.com"}, headers=KEY)
        for _ in range(50):
            await asyncio.sleep(0.1)
            if await count_rows(app, IdempotencyRecord) == 0:
                break
        assert await count_rows(app, IdempotencyRecord) == 0


async def test_a_response_is_replayed_only_to_the_origin_it_was_built_for(
    app: Quart, client: QuartClient
) -> None:
    body = {"name": "Ada", "email": "ada@example.com"}
    first = await client.post("/users", json=body, headers={**KEY, "Host": "evil.example"})
    assert first.headers["Location"] == "http://evil.example/users/1"
    retry = await client.post("/users", json=body, headers={**KEY, "Host": "files.example.com"})
    assert retry.status_code == 422
    assert "evil.example" not in (await retry.get_data(as_text=True))
    assert "Location" not in retry.headers
    same = await client.post("/users", json=body, headers={**KEY, "Host": "evil.example"})
    assert same.headers["Idempotent-Replayed"] == "true"
    assert await count_rows(app, User) == 1
