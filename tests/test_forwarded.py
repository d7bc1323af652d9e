"""QUART_APP_TRUSTED_PROXIES: Forwarded and X-Forwarded-* are honoured only
when the TCP peer is a trusted proxy, from the outermost trusted hop."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import Quart

from quart_app import create_app
from quart_app.config import ConfigError
from quart_app.edge.forwarded import Hop, TrustedProxies, forwarded_elements, parse_address, resolve

USER = {"name": "Ada", "email": "ada@example.com"}
PROXIES = TrustedProxies.parse("127.0.0.1, 10.0.0.0/8, 2001:db8::/32")


def headers(**fields: str) -> dict[bytes, list[str]]:
    return {name.replace("_", "-").lower().encode(): [value] for name, value in fields.items()}


@pytest.mark.parametrize(
    ("node", "address"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("192.0.2.1:4711", "192.0.2.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("unknown", None),
        ("_hidden", None),
        ("", None),
    ],
)
def test_addresses_in_forwarding_headers(node: str, address: str | None) -> None:
    parsed = parse_address(node)
    assert (str(parsed) if parsed else None) == address


def test_forwarded_elements_respect_quoted_strings() -> None:
    elements = forwarded_elements(
        ['for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711"', 'host="a,b"']
    )
    assert elements == [
        {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"},
        {"for": "[2001:db8:cafe::17]:4711"},
        {"host": "a,b"},
    ]


@pytest.mark.parametrize(
    ("fields", "hop"),
    [
        # One proxy: its own values.
        (
            headers(
                x_forwarded_for="203.0.113.9",
                x_forwarded_proto="https",
                x_forwarded_host="f.example",
            ),
            Hop("203.0.113.9", "https", "f.example"),
        ),
        # A client that sent its own X-Forwarded-For: the proxy appended the
        # real address; the spoofed entries to its left are never reached.
        (
            headers(x_forwarded_for="6.6.6.6, 203.0.113.9", x_forwarded_proto="https"),
            Hop("203.0.113.9", "https", None),
        ),
        # Two trusted proxies, each appending: the outer one's view.
        (
            headers(
                x_forwarded_for="203.0.113.9, 10.0.0.2",
                x_forwarded_proto="https, http",
                x_forwarded_host="f.example, inner.local",
            ),
            Hop("203.0.113.9", "https", "f.example"),
        ),
        # Two trusted hops but only one Proto value: not enough to know.
        (
            headers(x_forwarded_for="203.0.113.9, 10.0.0.2", x_forwarded_proto="http"),
            Hop("203.0.113.9", None, None),
        ),
        # Proto and Host without For: the peer's own.
        (headers(x_forwarded_proto="https"), Hop(None, "https", None)),
        # RFC 7239, one proxy.
        (
            headers(forwarded='for=203.0.113.9;proto=https;host="f.example:8443"'),
            Hop("203.0.113.9", "https", "f.example:8443"),
        ),
        # RFC 7239 through two trusted proxies, a spoofed element on the left.
        (
            headers(
                forwarded="for=6.6.6.6;host=evil.example, "
                "for=203.0.113.9;proto=https;host=f.example, for=10.0.0.2;proto=http;host=inner"
            ),
            Hop("203.0.113.9", "https", "f.example"),
        ),
        # Both families: the proxy set one and passed the client's other on.
        (headers(forwarded="host=evil.example", x_forwarded_host="f.example"), None),
        ({}, None),
    ],
)
def test_the_outermost_trusted_hop_is_resolved(
    fields: dict[bytes, list[str]], hop: Hop | None
) -> None:
    assert resolve(fields, PROXIES) == hop


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
    async with application.test_app() as test_app:
        yield test_app.app


SPOOF = {
    "Host": "backend:8000",
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "files.example.com",
}


async def post_from(app: Quart, peer: str, extra: dict[str, str]) -> Any:
    client = app.test_client()
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
    assert line.client == "203.0.113.9:0"


async def test_allowed_hosts_apply_to_the_forwarded_host(overrides: dict[str, Any]) -> None:
    application = create_app(
        {**overrides, "TRUSTED_PROXIES": "10.0.0.1", "ALLOWED_HOSTS": "files.example.com"}
    )
    async with application.test_app() as test_app:
        app = test_app.app
        allowed = await post_from(app, "10.0.0.1", SPOOF)
        assert allowed.status_code == 201
        refused = await post_from(app, "10.0.0.1", {**SPOOF, "X-Forwarded-Host": "evil.example"})
        assert refused.status_code == 400
