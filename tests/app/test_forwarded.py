"""QUART_APP_TRUSTED_PROXIES: Forwarded and X-Forwarded-* are honoured only
when the TCP peer is a trusted proxy, from the outermost trusted hop."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import Quart, Response

from devtools.quart_client import as_quart_client
from quart_app import create_app
from quart_app.config import ConfigError

USER = {"name": "Ada", "email": "ada@example.com"}


@pytest.mark.parametrize("value", ["proxy.example", "10.0.0.1/8", "10.0.0.0/33", "1.2.3"])
def test_a_bad_trusted_proxies_value_stops_startup(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("QUART_APP_TRUSTED_PROXIES", value)
    with pytest.raises(ConfigError, match="QUART_APP_TRUSTED_PROXIES"):
        create_app()


@pytest.fixture
async def behind_proxy(overrides: dict[str, Any]) -> AsyncIterator[Quart]:
    application = create_app({**overrides, "TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    async with application.test_app():
        yield application


SPOOF = {
    "Host": "backend:8000",
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "files.example.com",
}


async def post_from(app: Quart, peer: str, extra: dict[str, str]) -> Response:
    client = as_quart_client(app.test_client())
    return await client.post("/users", json=USER, headers=extra, scope_base={"client": (peer, 1)})


@pytest.mark.parametrize("peer", ["10.1.2.3", "::1", "::ffff:10.1.2.3"])
async def test_a_trusted_proxy_sets_scheme_and_host(behind_proxy: Quart, peer: str) -> None:
    response = await post_from(behind_proxy, peer, SPOOF)
    assert response.status_code == 201
    assert response.headers["Location"] == "https://files.example.com/users/1"


@pytest.mark.parametrize("peer", ["192.0.2.10", "11.0.0.1", "::2"])
async def test_anyone_else_cannot(behind_proxy: Quart, peer: str) -> None:
    response = await post_from(behind_proxy, peer, SPOOF)
    assert response.status_code == 201
    assert response.headers["Location"] == "http://backend:8000/users/1"


async def test_without_trusted_proxies_nobody_can(app: Quart) -> None:
    response = await post_from(app, "127.0.0.1", SPOOF)
    assert response.headers["Location"] == "http://backend:8000/users/1"


async def test_the_forwarded_header_works_too(behind_proxy: Quart) -> None:
    forwarded = {"Forwarded": 'for="[2001:db8::9]:1";proto=https;host=files.example.com'}
    response = await post_from(behind_proxy, "10.0.0.1", {"Host": "backend", **forwarded})
    assert response.headers["Location"] == "https://files.example.com/users/1"


async def test_a_malformed_forwarded_host_is_refused_like_any_host(behind_proxy: Quart) -> None:
    response = await post_from(
        behind_proxy, "10.0.0.1", {**SPOOF, "X-Forwarded-Host": "evil.example/@x"}
    )
    assert response.status_code == 400
    problem = json.loads(await response.get_data())
    assert problem["type"] == "urn:quart-app:problem:invalid-host"


async def test_an_unknown_forwarded_scheme_is_ignored(behind_proxy: Quart) -> None:
    response = await post_from(behind_proxy, "10.0.0.1", {**SPOOF, "X-Forwarded-Proto": "gopher"})
    assert response.headers["Location"] == "http://files.example.com/users/1"


async def test_the_access_log_names_the_client_not_the_proxy(
    behind_proxy: Quart, caplog: pytest.LogCaptureFixture
) -> None:
    await post_from(behind_proxy, "10.0.0.1", {**SPOOF, "X-Request-ID": "via-proxy"})
    [line] = [r for r in caplog.records if getattr(r, "request_id", None) == "via-proxy"]
    assert getattr(line, "client", None) == "203.0.113.9:0"


async def test_allowed_hosts_apply_to_the_forwarded_host(overrides: dict[str, Any]) -> None:
    application = create_app(
        {**overrides, "TRUSTED_PROXIES": "10.0.0.1", "ALLOWED_HOSTS": "files.example.com"}
    )
    async with application.test_app():
        app = application
        allowed = await post_from(app, "10.0.0.1", SPOOF)
        assert allowed.status_code == 201
        refused = await post_from(app, "10.0.0.1", {**SPOOF, "X-Forwarded-Host": "evil.example"})
        assert refused.status_code == 400
