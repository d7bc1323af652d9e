"""The access line and the worker's lifecycle lines, as the app writes them
(Hypercorn's own lines, and these from a real server: tests/e2e/test_logs.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from importlib.metadata import version
from typing import Any

import pytest
from quart import Quart
from quart.testing import QuartClient

from devtools.quart_client import as_http_connection, as_quart_client
from quart_app import create_app
from quart_app.edge.access_log import JSONFormatter


async def test_one_json_line_per_request_with_the_fields(
    client: QuartClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_app.access")
    response = await client.post(
        "/users",
        json={"name": "A", "email": "log@example.com"},
        headers={"X-Request-ID": "abc-123", "User-Agent": "curl/8.5.0\x01"},
    )
    assert response.headers["X-Request-ID"] == "abc-123"
    records = [r for r in caplog.records if r.name == "quart_app.access"]
    assert len(records) == 1
    line = json.loads(JSONFormatter().format(records[0]))
    assert line["method"] == "POST"
    assert line["path"] == "/users"
    assert line["status"] == 201
    assert line["request_id"] == "abc-123"
    assert line["bytes_in"] == len(b'{"name": "A", "email": "log@example.com"}')
    assert line["bytes_out"] == len(await response.get_data())
    assert isinstance(line["duration_ms"], float)
    assert line["user_agent"] == "curl/8.5.0"
    assert "client" in line
    assert line["problem"] is None


async def test_a_refusal_names_its_problem_type(
    client: QuartClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Every 4xx/5xx line says why: the problem type of the answer."""
    caplog.set_level(logging.INFO, logger="quart_app.access")
    missing = await client.get("/files/nothing-here")
    bad = await client.post("/users", json={"name": "A"})
    assert (missing.status_code, bad.status_code) == (404, 400)
    records = [r for r in caplog.records if r.name == "quart_app.access"]
    lines = [json.loads(JSONFormatter().format(r)) for r in records]
    assert [(x["status"], x["problem"]) for x in lines] == [
        (404, (await missing.get_json())["type"]),
        (400, (await bad.get_json())["type"]),
    ]
    assert lines[0]["problem"].startswith("urn:quart-app:problem:")


async def test_request_id_is_generated_when_absent(client: QuartClient) -> None:
    first = (await client.get("/healthz")).headers["X-Request-ID"]
    second = (await client.get("/healthz")).headers["X-Request-ID"]
    assert first and second and first != second


async def test_hostile_request_id_is_sanitised_and_bounded(client: QuartClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": 'a<b>c"d' + "x" * 500})
    echoed = response.headers["X-Request-ID"]
    assert echoed.startswith("abcd")
    assert len(echoed) == 128


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        json.loads(JSONFormatter().format(r))
        for r in caplog.records
        if r.name == "quart_app.access"
    ]


async def test_the_query_is_logged_with_secret_values_redacted(
    client: QuartClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_app.access")
    query = "limit=2&api_key=k1&X-Amz-Signature=s1&access_token=t1&Signature=s2&page=c"
    assert (await client.get(f"/users?{query}")).status_code == 200
    await client.get("/users")
    first, second = access_lines(caplog)
    assert first["path"] == "/users"
    assert first["query"] == (
        "limit=2&api_key=REDACTED&X-Amz-Signature=REDACTED&access_token=REDACTED"
        "&Signature=REDACTED&page=c"
    )
    assert second["query"] is None
    for secret in ("k1", "s1", "t1", "s2"):
        assert f"={secret}" not in JSONFormatter().format(caplog.records[0])


async def test_every_line_says_how_the_request_ended(
    client: QuartClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_app.access")
    await client.get("/healthz")
    await client.get("/files/nothing-here")
    assert [(x["status"], x["outcome"]) for x in access_lines(caplog)] == [
        (200, "answered"),
        (404, "answered"),
    ]


async def test_a_client_that_hangs_up_is_labelled_not_given_a_status(
    app: Quart, client: QuartClient, caplog: pytest.LogCaptureFixture, overrides: dict[str, Any]
) -> None:
    """The client leaves halfway through its upload: no answer reached it,
    so the line has no status and says so (the app's own late answer to a
    body that ended early, a 400, went nowhere)."""
    caplog.set_level(logging.INFO, logger="quart_app.access")
    headers = {"Content-Length": str(1024 * 1024), "X-Request-ID": "hung-up"}
    async with as_http_connection(
        client.request("/files/gone", method="PUT", headers=headers)
    ) as conn:
        await conn.send(b"x" * 65536)
        await asyncio.sleep(0.05)
        await conn.disconnect()
    for _ in range(100):  # the line is written once the app has let go
        if access_lines(caplog):
            break
        await asyncio.sleep(0.01)
    [line] = access_lines(caplog)
    assert line["request_id"] == "hung-up"
    assert (line["status"], line["outcome"], line["problem"]) == (None, "client hung up", None)
    assert line["bytes_in"] == 65536
    assert (await client.get("/files/gone")).status_code == 404


async def test_a_worker_logs_one_line_when_it_starts_and_one_when_it_stops(
    overrides: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_app.lifecycle")
    app = create_app(overrides)
    async with app.test_app():
        await as_quart_client(app.test_client()).get("/healthz")
    lines = [
        json.loads(JSONFormatter().format(r))
        for r in caplog.records
        if r.name == "quart_app.lifecycle"
    ]
    assert [x["message"] for x in lines] == ["worker started", "worker stopped"]
    started, stopped = lines
    assert started["version"] == version("quart_app")
    assert started["pid"] == stopped["pid"] == os.getpid()
    database = "postgresql" if overrides["DATABASE_URL"].startswith("postgresql") else "sqlite"
    storage = "s3" if overrides.get("STORAGE_URL") else "local"
    assert (started["database"], started["storage"]) == (database, storage)
    assert started["schema_revision"]
    # Under the test app there is no Hypercorn: no bind, no signal.
    assert started["bind"] is None and started["workers"] is None
    assert 0 <= stopped["shutdown_seconds"] < 5
    assert stopped["requests_in_flight_at_signal"] is None


def test_python_warnings_are_json_lines_too() -> None:
    """A RuntimeWarning (an un-awaited coroutine at shutdown, say) goes
    through logging as a JSON line, not as plain text on stderr. In a
    process of its own: pytest holds the warnings machinery of this one."""
    program = (
        "import warnings\n"
        "from quart_app.edge.access_log import configure_logging\n"
        "configure_logging('INFO')\n"
        "warnings.warn('coroutine never awaited', RuntimeWarning)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    [line] = [json.loads(x) for x in result.stderr.splitlines()]
    assert (line["logger"], line["level"]) == ("py.warnings", "WARNING")
    assert "RuntimeWarning: coroutine never awaited" in line["message"]
