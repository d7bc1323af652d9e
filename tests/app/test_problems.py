"""Every error leaves as application/problem+json, including Quart's own."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from quart import Response
from quart.testing import QuartClient

from devtools.quart_client import as_http_connection, as_quart_client
from quart_app import create_app


async def assert_problem(response: Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.get_json(force=True)
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"]
    return body


async def test_unknown_route_is_404_problem(client: QuartClient) -> None:
    await assert_problem(await client.get("/nowhere"), 404)


async def test_wrong_method_is_405_problem_with_allow(client: QuartClient) -> None:
    response = await client.delete("/users")
    await assert_problem(response, 405)
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


async def test_unexpected_exception_is_500_without_internals_and_logged(
    overrides: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(overrides)

    @app.get("/boom")
    async def boom() -> str:
        raise RuntimeError("secret internal detail")

    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/boom", headers={"X-Request-ID": "req-42"})
    body = await assert_problem(response, 500)
    assert "secret" not in json.dumps(body)
    assert "Traceback" not in json.dumps(body)
    records = [r for r in caplog.records if r.name == "quart_app.errors"]
    assert records and records[0].exc_info is not None
    assert getattr(records[0], "request_id", None) == "req-42"


async def test_stalled_body_is_408_problem(overrides: dict[str, Any]) -> None:
    app = create_app({**overrides, "BODY_IDLE_TIMEOUT": 0.2})
    async with app.test_app() as test_app:
        client = as_quart_client(test_app.test_client())
        async with as_http_connection(
            client.request("/users", method="POST", headers={"Content-Type": "application/json"})
        ) as connection:
            await connection.send(b'{"name": ')
            await asyncio.sleep(0.5)
            await connection.send_complete()
            await connection.receive()
        assert connection.status_code == 408
        assert connection.headers is not None
        assert connection.headers["Content-Type"] == "application/problem+json"


async def test_declared_length_over_limit_is_413_before_reading(
    overrides: dict[str, Any],
) -> None:
    app = create_app({**overrides, "MAX_JSON_BYTES": 10})
    async with app.test_app() as test_app:
        client = as_quart_client(test_app.test_client())
        async with as_http_connection(
            client.request(
                "/users",
                method="POST",
                headers={"Content-Type": "application/json", "Content-Length": "1000000"},
            )
        ) as connection:
            # No body is sent at all: the answer must come from the header.
            response = await asyncio.wait_for(connection.receive(), 5)
        assert connection.status_code == 413
        assert json.loads(response)["status"] == 413


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("POST", "/filez", 404), ("PATCH", "/files", 405), ("PUT", "/users", 405)],
)
async def test_routing_answers_before_any_body_limit(
    client: QuartClient, method: str, path: str, status: int
) -> None:
    # 5 MiB declared, over the 1 MiB JSON limit that used to apply when no
    # route matched (a 413); no body is sent, so an answer proves the body
    # was never waited for.
    async with as_http_connection(
        client.request(
            path,
            method=method,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(5 * 2**20)},
        )
    ) as connection:
        response = await asyncio.wait_for(connection.receive(), 5)
    assert connection.status_code == status
    assert connection.headers is not None
    assert connection.headers["Content-Type"] == "application/problem+json"
    assert json.loads(response)["status"] == status
    if status == 405:
        assert method not in connection.headers["Allow"]
        assert "GET" in connection.headers["Allow"]


async def test_a_whole_oversized_body_to_a_wrong_route_is_404(client: QuartClient) -> None:
    response = await client.post("/filez", data=b"x" * (5 * 2**20))
    await assert_problem(response, 404)
    response = await client.patch("/files", data=b"x" * (5 * 2**20))
    await assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]
