"""Forwarded and X-Forwarded-* parsed as pure functions of header values:
addresses, elements, and the outermost trusted hop."""

from __future__ import annotations

import pytest

from quart_app.edge.forwarded import Hop, TrustedProxies, forwarded_elements, parse_address, resolve

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
