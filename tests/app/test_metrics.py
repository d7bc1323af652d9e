"""``GET /metrics`` in one process: what each family counts, its labels, and
who may read it (README "Metrics"). Counters live as long as the process,
so every test compares a scrape before with one after. Several workers
adding up: tests/e2e/test_metrics.py."""

from __future__ import annotations

import asyncio
import io
import os
import zipfile
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from quart import Quart
from quart.testing import QuartClient
from sqlalchemy import select

from devtools.auth import TEST_ADMIN_KEY, KeyedClient, bearer
from devtools.metrics import FAMILIES
from devtools.quart_client import as_http_connection
from quart_app.db.engine import Database
from quart_app.db.models import ImportJob, utc_now
from quart_app.services.resumable_uploads import sweep_expired
from quart_app.state import app_state

TUS = {"Tus-Resumable": "1.0.0"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Short database waits; no import worker, so queued jobs stay queued."""
    return {**overrides, "DATABASE_TIMEOUT": 0.3, "IMPORT_WORKERS": 0}


async def scrape(client: QuartClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, await response.get_data(as_text=True)
    text = await response.get_data(as_text=True)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def settled(client: QuartClient) -> Samples:
    """A scrape once the previous request's figures are in (they are
    recorded after its last byte, when the test client has its answer)."""
    await asyncio.sleep(0)
    return await scrape(client)


@pytest.mark.postgresql
async def test_a_request_is_counted_under_its_route_template(client: QuartClient) -> None:
    before = await scrape(client)
    response = await client.get("/files/no-such-file")
    assert response.status_code == 404
    after = await settled(client)
    route = {"route": "/files/<file_id>", "method": "GET"}
    assert moved(before, after, "quart_app_http_requests_total", **route, status="404") == 1
    assert moved(before, after, "quart_app_http_request_duration_seconds_count", **route) == 1
    assert (
        moved(before, after, "quart_app_http_request_duration_seconds_bucket", **route, le="+Inf")
        == 1
    )
    # The path itself never becomes a label (one series per id: unbounded).
    assert not any("no-such-file" in str(labels) for _, labels in after)


async def test_unmatched_and_refused_requests_keep_a_bounded_label(
    client: KeyedClient,
) -> None:
    before = await scrape(client)
    assert (await client.get("/no/such/route")).status_code == 404
    assert (await client.open("/files", method="BREW")).status_code == 405
    client.key = None
    assert (await client.get("/users/1")).status_code == 401  # refused: its route is known
    client.key = TEST_ADMIN_KEY
    after = await settled(client)
    requests = "quart_app_http_requests_total"
    assert moved(before, after, requests, route="unmatched", method="GET", status="404") == 1
    assert moved(before, after, requests, route="unmatched", method="other", status="405") == 1
    assert (
        moved(before, after, requests, route="/users/<int:user_id>", method="GET", status="401")
        == 1
    )


async def test_bytes_received_and_sent_are_counted(client: QuartClient) -> None:
    data = os.urandom(5000)
    before = await scrape(client)
    created = await client.put("/files/bytes.bin", data=data)
    assert created.status_code == 201
    created_body = await created.get_data()
    download = await client.get("/files/bytes.bin/content")
    assert await download.get_data() == data
    after = await settled(client)
    put = {"route": "/files/<file_id>", "method": "PUT"}
    get = {"route": "/files/<file_id>/content", "method": "GET"}
    assert moved(before, after, "quart_app_http_received_bytes_total", **put) == len(data)
    assert moved(before, after, "quart_app_http_sent_bytes_total", **put) == len(created_body)
    assert moved(before, after, "quart_app_http_sent_bytes_total", **get) == len(data)
    assert moved(before, after, "quart_app_http_received_bytes_total", **get) == 0


async def test_metrics_needs_an_admin_key(app: Quart, client: KeyedClient) -> None:
    made = await client.post("/users", json={"name": "Ada", "email": "ada@example.com"})
    key = await client.post(
        f"/users/{(await made.get_json())['id']}/keys", json={"scopes": ["read", "write"]}
    )
    secret = (await key.get_json())["secret"]
    client.key = None
    anonymous = await client.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="quart_app"'
    user = await client.get("/metrics", headers=bearer(secret))
    assert user.status_code == 403
    assert (await user.get_json())["type"] == "urn:quart-app:problem:insufficient-scope"
    assert 'error="insufficient_scope", scope="admin"' in user.headers["WWW-Authenticate"]
    admin = await client.get("/metrics", headers=bearer())
    assert admin.status_code == 200
    assert admin.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = await admin.get_data(as_text=True)
    assert "# TYPE quart_app_http_requests_total counter" in text


async def test_group_commit_batch_sizes_are_observed(client: QuartClient) -> None:
    before = await scrape(client)
    answers = await asyncio.gather(
        *(
            client.post("/users", json={"name": f"U{n}", "email": f"u{n}@example.com"})
            for n in range(6)
        )
    )
    assert [a.status_code for a in answers] == [201] * 6
    after = await settled(client)
    batches = moved(before, after, "quart_app_group_commit_batch_size_count", batcher="users")
    assert 1 <= batches <= 6
    # Every create rode one batch: the batch sizes add up to the creates.
    assert moved(before, after, "quart_app_group_commit_batch_size_sum", batcher="users") == 6


@pytest.mark.sqlite_only
async def test_a_busy_database_is_counted(app: Quart, client: QuartClient) -> None:
    database: Database = app_state(app).database
    before = await scrape(client)
    async with database.write_lock:  # a writer that never finishes
        response = await client.post("/users", json={"name": "A", "email": "a@example.com"})
    assert response.status_code == 503
    after = await settled(client)
    # (the background sweep, if it ran meanwhile, met the busy database too)
    assert moved(before, after, "quart_app_database_errors_total", kind="unavailable") >= 1
    assert moved(before, after, "quart_app_database_errors_total", kind="full") == 0


@pytest.mark.sqlite_only
async def test_a_database_file_gone_is_counted(app: Quart, client: QuartClient) -> None:
    """A DBAPI error from the driver itself (the file cannot be opened)."""
    database: Database = app_state(app).database
    assert database.path is not None
    before = await scrape(client)
    # Not engine.dispose(): a connection the startup sweep has checked out
    # would survive it unclosed. A pooled connection to the file is dropped
    # at checkout once the path no longer names that file (engine.py).
    moved_away = database.path.with_suffix(".away")
    database.path.rename(moved_away)
    try:
        assert (await client.get("/readyz")).status_code == 503
    finally:
        moved_away.rename(database.path)
    after = await settled(client)
    assert moved(before, after, "quart_app_database_errors_total", kind="unavailable") >= 1


async def test_resumable_uploads_created_finished_and_expired(
    app: Quart, client: QuartClient
) -> None:
    before = await scrape(client)
    created = await client.post("/uploads", headers={**TUS, "Upload-Length": "3"})
    assert created.status_code == 201
    patched = await client.patch(
        created.headers["Location"],
        data=b"abc",
        headers={
            **TUS,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert patched.status_code == 204
    left = await client.post("/uploads", headers={**TUS, "Upload-Length": "10"})
    assert left.status_code == 201
    state = app_state(app)
    later = utc_now() + timedelta(seconds=state.settings.UPLOAD_EXPIRES_SECONDS + 60)
    assert await sweep_expired(state.database, state.store, later) == 2  # finished one too
    after = await settled(client)
    assert moved(before, after, "quart_app_resumable_uploads_created_total") == 2
    assert moved(before, after, "quart_app_resumable_uploads_finished_total") == 1
    # Only the upload that never finished expired; the other had become a file.
    assert moved(before, after, "quart_app_resumable_uploads_expired_total") == 1


async def test_an_upload_is_in_flight_while_its_body_arrives(client: QuartClient) -> None:
    before = value(await scrape(client), "quart_app_uploads_in_flight")
    async with client.request("/files/slow.bin", method="PUT") as raw:
        connection = as_http_connection(raw)
        await connection.send(b"x" * 1000)
        await asyncio.sleep(0.05)
        assert value(await scrape(client), "quart_app_uploads_in_flight") == before + 1
        await connection.send_complete()
        await connection.receive()
    assert connection.status_code == 201
    assert value(await settled(client), "quart_app_uploads_in_flight") == before


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


@pytest.mark.postgresql
async def test_the_import_queue_is_read_from_the_database(app: Quart, client: QuartClient) -> None:
    """No import worker here (IMPORT_WORKERS 0): queued jobs wait."""
    first = await scrape(client)
    assert value(first, "quart_app_import_queue_depth") == 0
    assert value(first, "quart_app_import_queue_age_seconds") == 0
    for n in range(2):
        queued = await client.post("/imports", data=zip_bytes({f"{n}.txt": b"x"}))
        assert queued.status_code == 202
    # The first has waited a while (times are stored to the second).
    database = app_state(app).database
    async with database.sessionmaker() as session, database.writing(session):
        oldest = await session.scalar(select(ImportJob).order_by(ImportJob.seq).limit(1))
        assert oldest is not None
        oldest.created_at = utc_now() - timedelta(seconds=90)
    after = await scrape(client)
    assert value(after, "quart_app_import_queue_depth") == 2
    assert 90 <= value(after, "quart_app_import_queue_age_seconds") < 120


async def test_every_family_is_described(app: Quart) -> None:
    """Each family, with its HELP and TYPE, on a fresh app's first scrape."""
    client = app.test_client()
    text = await (await client.get("/metrics")).get_data(as_text=True)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    expected = FAMILIES
    assert {name: families[name].type for name in expected if name in families} == expected
    assert all(families[name].documentation for name in expected)


@pytest.mark.sqlite_only  # takes the database away by moving its file
async def test_a_metrics_scrape_with_the_database_down_still_answers(
    app: Quart, client: QuartClient
) -> None:
    """The queue families need the database; the rest does not."""
    database: Database = app_state(app).database
    assert database.path is not None
    moved_away = database.path.with_suffix(".away")
    database.path.rename(moved_away)
    try:
        samples = await scrape(client)  # the admin key is cached: no database read
    finally:
        moved_away.rename(database.path)
    assert ("quart_app_import_queue_depth", frozenset()) not in samples
    assert ("quart_app_workers", frozenset()) in samples


async def test_the_api_description_says_metrics_are_text(client: QuartClient) -> None:
    spec = await (await client.get("/openapi.json")).get_json()
    operation = spec["paths"]["/metrics"]["get"]
    assert list(operation["responses"]["200"]["content"]) == ["text/plain"]
    assert operation["security"] == [{"bearer": []}]
    assert {"401", "403"} <= set(operation["responses"])
