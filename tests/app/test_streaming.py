"""The app runs with the bounded body and no whole-response deadline, and
bodies over a limit or too slow are refused as they pass."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from quart import Quart

from devtools.quart_client import as_http_connection, as_quart_client
from devtools.stored import temp_files
from quart_app import create_app
from quart_app.edge.bodies import BoundedBody
from quart_app.edge.server_internals import BackPressureHTTPConnection


async def test_app_uses_the_bounded_body(app: Quart) -> None:
    assert app.asgi_http_class is BackPressureHTTPConnection
    body_class: object = app.request_class.body_class  # BoundedBody is not a Body subclass
    assert body_class is BoundedBody


def test_responses_have_no_whole_response_deadline(app: Quart) -> None:
    # Quart's default (60 s) cut any download that took longer;
    # edge/server_internals.py (GuardedTCPServer) bounds responses by idle
    # time and rate instead.
    assert app.config["RESPONSE_TIMEOUT"] is None


async def test_chunked_body_over_the_limit_is_413_as_it_passes(
    overrides: dict[str, Any], tmp_path: Path
) -> None:
    app = create_app({**overrides, "MAX_UPLOAD_BYTES": 100_000, "MAX_MULTIPART_OVERHEAD_BYTES": 0})
    async with app.test_app() as test_app:
        client = as_quart_client(test_app.test_client())
        async with as_http_connection(
            client.request(
                "/files/big.bin", method="PUT", headers={"Content-Type": "application/octet-stream"}
            )
        ) as connection:
            for _ in range(10):
                await connection.send(b"x" * 20_000)
            await connection.send_complete()
            await connection.receive()
        assert connection.status_code == 413
        assert connection.headers is not None
        assert connection.headers["Content-Type"] == "application/problem+json"
    assert temp_files(overrides["STORAGE_DIR"]) == []


async def test_upload_idle_timeout_is_408_and_leaves_nothing(overrides: dict[str, Any]) -> None:
    app = create_app({**overrides, "BODY_IDLE_TIMEOUT": 0.2})
    async with app.test_app() as test_app:
        client = as_quart_client(test_app.test_client())
        async with as_http_connection(
            client.request("/files/slow.bin", method="PUT")
        ) as connection:
            await connection.send(b"x" * 1000)
            await asyncio.sleep(0.6)
            await connection.send_complete()
            await connection.receive()
        assert connection.status_code == 408
    assert temp_files(overrides["STORAGE_DIR"]) == []


async def test_whole_body_deadline_is_408_even_for_a_steady_trickle(
    overrides: dict[str, Any],
) -> None:
    app = create_app({**overrides, "BODY_IDLE_TIMEOUT": 5, "BODY_DEADLINE": 0.5})
    async with app.test_app() as test_app:
        client = as_quart_client(test_app.test_client())
        async with as_http_connection(
            client.request("/files/trickle.bin", method="PUT")
        ) as connection:
            for _ in range(10):
                await connection.send(b"x" * 10)
                await asyncio.sleep(0.1)
            await connection.send_complete()
            await connection.receive()
        assert connection.status_code == 408
