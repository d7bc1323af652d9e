"""End to end: a real Hypercorn process, driven with curl and httpx."""

from __future__ import annotations

import asyncio
import json

import httpx

from devtools.auth import bearer
from devtools.curl import curl
from devtools.server import RunningServer
from devtools.stored import rows


def test_create_read_invalid_and_resend_with_curl(server: RunningServer) -> None:
    payload = json.dumps({"name": "Grace Hopper", "email": "grace@example.com"})
    args = ["-X", "POST", f"{server.url}/users", "-H", "Content-Type: application/json"]
    status, headers, body = curl(*args, "-d", payload)
    assert status == 201
    created = json.loads(body)
    assert created["name"] == "Grace Hopper"
    assert headers["location"] == f"{server.url}/users/{created['id']}"
    assert headers["x-request-id"]

    status, headers, body = curl(headers["location"])
    assert status == 200
    assert json.loads(body) == created

    status, headers, body = curl(*args, "-d", '{"name": "", "email": "x"}')
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert {e["field"] for e in json.loads(body)["errors"]} == {"name", "email"}

    status, headers, body = curl(*args, "-d", payload)
    assert status == 409
    assert json.loads(body)["existing"] == f"{server.url}/users/{created['id']}"

    assert rows(server, "users") == 1


def test_twenty_concurrent_creates_with_one_email(server: RunningServer) -> None:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, headers=bearer(), timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/users", json={"name": f"n{i}", "email": "same@example.com"})
                    for i in range(20)
                )
            )

    responses = asyncio.run(run())
    assert sorted(r.status_code for r in responses) == [201] + [409] * 19
    assert "database is locked" not in server.log()
    assert rows(server, "users") == 1


def test_errors_raised_by_the_framework_are_problems(server: RunningServer) -> None:
    status, headers, _ = curl(f"{server.url}/nowhere")
    assert (status, headers["content-type"]) == (404, "application/problem+json")
    status, headers, _ = curl("-X", "PATCH", f"{server.url}/users")
    assert (status, headers["content-type"]) == (405, "application/problem+json")
    assert "allow" in headers


def test_startup_log_is_json_per_request(server: RunningServer) -> None:
    curl(f"{server.url}/healthz", "-H", "X-Request-ID: e2e-1")
    [line] = server.wait_for_access(lambda x: x["request_id"] == "e2e-1")
    assert line["status"] == 200 and line["path"] == "/healthz"
    assert {"method", "duration_ms", "bytes_in", "bytes_out"} <= set(line)


def test_fifty_concurrent_retries_with_one_idempotency_key(server: RunningServer) -> None:
    body = {"name": "Ada", "email": "ada@example.com"}

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, headers=bearer(), timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/users", json=body, headers={"Idempotency-Key": "k1"})
                    for _ in range(50)
                )
            )

    responses = asyncio.run(run())
    statuses = [r.status_code for r in responses]
    assert all(s in (201, 409) for s in statuses), statuses
    assert len({r.content for r in responses if r.status_code == 201}) == 1
    assert rows(server, "users") == 1
    replay = httpx.post(
        f"{server.url}/users", json=body, headers={"Idempotency-Key": '"k1"', **bearer()}
    )
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
