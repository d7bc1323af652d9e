"""CORS answers and caches: a response that depends on Origin says so."""

from __future__ import annotations

from typing import Any

import pytest
from werkzeug.datastructures import Headers

from devtools.quart_client import as_quart_client
from quart_app import create_app

TUS = {"Tus-Resumable": "1.0.0"}
ALLOWED = "https://app.example"
# A JSON answer, a problem, a download and a 304, an upload: all depend on
# Origin once CORS is configured with a list.
REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/healthz", {}),
    ("GET", "/files/none", {}),
    ("GET", "/files/f/content", {}),
    ("GET", "/files/f/content", {"If-None-Match": "*"}),
    ("HEAD", "/uploads/none", TUS),
    ("POST", "/users", {"Content-Type": "text/plain"}),
    ("OPTIONS", "/uploads", {"Access-Control-Request-Method": "PATCH"}),
]


def vary(headers: Headers) -> set[str]:
    return {v.strip().lower() for v in headers.get("Vary", "").split(",") if v.strip()}


async def answers(
    overrides: dict[str, Any], cors: str | None, origin: str | None
) -> list[tuple[str, Headers]]:
    settings = {**overrides, "CORS_ORIGINS": cors} if cors is not None else overrides
    app = create_app(settings)
    async with app.test_app() as test_app:
        client = as_quart_client(test_app.test_client())
        assert (await client.put("/files/f", data=b"x")).status_code == 201
        found = []
        for method, path, headers in REQUESTS:
            sent = {**headers, **({"Origin": origin} if origin else {})}
            response = await client.open(path, method=method, headers=sent)
            found.append((f"{method} {path} {headers}", response.headers))
        return found


@pytest.mark.parametrize("origin", [ALLOWED, "https://evil.example", "null", None])
async def test_with_a_list_every_answer_varies_by_origin(
    overrides: dict[str, Any], origin: str | None
) -> None:
    """Fetch standard, "CORS protocol and HTTP caches": with an allowed list
    the answer differs by Origin, also for one that is absent or refused, so
    a shared cache must key on it (else it may hand one origin's answer, or
    a non-CORS answer, to another)."""
    for request, headers in await answers(overrides, f"{ALLOWED}, https://other.example", origin):
        assert "origin" in vary(headers), request
        if origin == ALLOWED:
            assert headers["Access-Control-Allow-Origin"] == ALLOWED, request
        else:
            assert "Access-Control-Allow-Origin" not in headers, request


@pytest.mark.parametrize("origin", [ALLOWED, None])
async def test_with_a_star_no_answer_varies(overrides: dict[str, Any], origin: str | None) -> None:
    """``*`` (no credentials) is the same for everyone, Origin or not: no
    Vary, and the header is there even for a request without Origin, so
    a cached answer serves a browser as well."""
    for request, headers in await answers(overrides, "*", origin):
        assert headers["Access-Control-Allow-Origin"] == "*", request
        assert "Location" in headers["Access-Control-Expose-Headers"], request
        assert "origin" not in vary(headers), request


async def test_without_cors_nothing_varies(overrides: dict[str, Any]) -> None:
    for request, headers in await answers(overrides, None, ALLOWED):
        assert "Access-Control-Allow-Origin" not in headers, request
        assert "origin" not in vary(headers), request


async def test_a_preflight_from_an_allowed_origin(overrides: dict[str, Any]) -> None:
    app = create_app({**overrides, "CORS_ORIGINS": ALLOWED})
    async with app.test_app() as test_app:
        preflight = await test_app.test_client().options(
            "/uploads/x",
            headers={"Origin": ALLOWED, "Access-Control-Request-Method": "PATCH"},
        )
    assert preflight.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
    assert "origin" in vary(preflight.headers)
