"""QUART_APP_PUBLIC_URL: every absolute URL the app builds carries the public
scheme, host and path prefix, whatever Host and scheme the request came
with, including the responses stored for Idempotency-Key replays."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import Quart, Response
from quart.testing import QuartClient

from devtools.form_data import multipart, multipart_headers, part
from devtools.quart_client import as_quart_client
from quart_app import create_app
from quart_app.config import ConfigError

TUS = {"Tus-Resumable": "1.0.0"}
# What a TLS-terminating proxy that rewrites nothing passes on, or a client
# that names any host it likes.
BACKEND = {"Host": "backend:8000"}


def urls_in(response: Response, body: bytes) -> list[str]:
    """Every absolute URL in Location, Link and the JSON body."""
    found = []
    if "Location" in response.headers:
        found.append(response.headers["Location"])
    found += re.findall(r"<([^>]*)>", response.headers.get("Link", ""))

    def walk(value: object) -> None:
        if isinstance(value, str) and "://" in value:
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    if body and response.headers.get("Content-Type", "").endswith("json"):
        walk(json.loads(body))
    return found


class Recorder:
    """Sends requests with a backend Host and collects every URL answered."""

    def __init__(self, client: QuartClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix  # the path prefix the proxy strips
        self.urls: list[str] = []

    async def send(self, method: str, path: str, **kw: Any) -> tuple[Response, Any]:
        headers = {**BACKEND, **kw.pop("headers", {})}
        response = await self.client.open(path, method=method, headers=headers, **kw)
        body = await response.get_data(as_text=False)
        assert response.status_code < 300 or response.status_code == 409, body
        self.urls += urls_in(response, body)
        return response, json.loads(body) if body else None

    def local(self, url: str) -> str:
        """A URL this app answered, as the proxy would pass it on."""
        path = url.split("://", 1)[1].partition("/")[2]
        return "/" + path.removeprefix(self.prefix.strip("/")).lstrip("/")


async def exercise_every_url(recorder: Recorder) -> None:
    send, local = recorder.send, recorder.local
    user, _ = await send("POST", "/users", json={"name": "A", "email": "a@example.com"})
    await send("POST", "/users", json={"name": "B", "email": "b@example.com"})
    _, conflict = await send("POST", "/users", json={"name": "A", "email": "A@example.com"})
    assert conflict["existing"] == user.headers["Location"]
    await send("GET", local(user.headers["Location"]))
    _, first = await send("GET", "/users?limit=1")
    assert first["next"]
    await send("GET", local(first["next"]))

    one, _ = await send(
        "POST", "/files", data=multipart(part("file", b"one", "1.txt")), headers=multipart_headers()
    )
    await send("GET", local(one.headers["Location"]))
    batch, _ = await send(
        "POST",
        "/files",
        data=multipart(part("file", b"a", "a.txt"), part("file", b"b", "b.txt")),
        headers=multipart_headers(),
    )
    await send("GET", local(batch.headers["Location"]))
    await send("PUT", "/files/put.txt", data=b"put")
    await send("GET", "/files?limit=1")

    tus, _ = await send(
        "POST",
        "/uploads",
        data=b"abc",
        headers={
            **TUS,
            "Upload-Length": "3",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert 'rel="related"' in tus.headers["Link"]
    await send("GET", local(tus.headers["Location"]), headers=TUS)
    deferred, _ = await send("POST", "/uploads", headers={**TUS, "Upload-Length": "2"})
    # Through the method override (tus clients behind GET/POST-only proxies).
    await send(
        "POST",
        local(deferred.headers["Location"]),
        data=b"xy",
        headers={
            **TUS,
            "X-HTTP-Method-Override": "PATCH",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    await send("GET", local(deferred.headers["Location"]), headers=TUS)


@pytest.fixture
async def public(overrides: dict[str, Any]) -> AsyncIterator[Quart]:
    application = create_app({**overrides, "PUBLIC_URL": "https://files.example.com"})
    async with application.test_app():
        yield application


async def test_every_absolute_url_carries_the_public_origin(public: Quart) -> None:
    recorder = Recorder(as_quart_client(public.test_client()), "")
    await exercise_every_url(recorder)
    assert len(recorder.urls) > 25
    for url in recorder.urls:
        assert url.startswith("https://files.example.com/"), url


async def test_a_path_prefix_is_in_every_url_and_stripped_requests_still_route(
    overrides: dict[str, Any],
) -> None:
    application = create_app({**overrides, "PUBLIC_URL": "https://example.com/storage/v1/"})
    async with application.test_app() as test_app:
        recorder = Recorder(as_quart_client(test_app.test_client()), "/storage/v1")
        await exercise_every_url(recorder)
    for url in recorder.urls:
        assert url.startswith("https://example.com/storage/v1/"), url
    assert "https://example.com/storage/v1/users/1" in recorder.urls


async def test_without_it_urls_follow_the_request(client: QuartClient) -> None:
    recorder = Recorder(client, "")
    await exercise_every_url(recorder)
    for url in recorder.urls:
        assert url.startswith("http://backend:8000/"), url


async def test_a_replayed_response_carries_the_public_url_whatever_host_asked(
    public: Quart,
) -> None:
    client = as_quart_client(public.test_client())
    body = {"name": "A", "email": "a@example.com"}
    key = {"Idempotency-Key": "k-1"}
    first = await client.post("/users", json=body, headers={**key, "Host": "evil.example"})
    again = await client.post("/users", json=body, headers={**key, "Host": "evil.example"})
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.headers["Location"] == again.headers["Location"]
    assert again.headers["Location"] == "https://files.example.com/users/1"


@pytest.mark.parametrize(
    "value",
    [
        "files.example.com",
        "//files.example.com",
        "ftp://files.example.com",
        "https://",
        "https://files.example.com/?a=1",
        "https://files.example.com/?",
        "https://files.example.com/#top",
        "https://user@files.example.com",
        "https://files.example.com:99999",
        "https://files example.com",
        "https://files.example.com/a/../b",
        "https://files.example.com/a//b",
        "https://files.example.com/a b",
    ],
)
def test_a_bad_public_url_stops_startup(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("QUART_APP_PUBLIC_URL", value)
    with pytest.raises(ConfigError, match="QUART_APP_PUBLIC_URL"):
        create_app()
