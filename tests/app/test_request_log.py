from __future__ import annotations

import json
import logging

import pytest
from quart.testing import QuartClient

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
