"""Host header values and QUART_APP_ALLOWED_HOSTS patterns, parsed and
matched as pure functions."""

from __future__ import annotations

import pytest

from devtools.malformed_hosts import MALFORMED
from quart_app.edge.hosts import AllowedHosts, Host, parse_host


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("files.example.com", Host("files.example.com", None)),
        ("Files.Example.COM:8443", Host("files.example.com", 8443)),
        ("files.example.com.", Host("files.example.com", None)),
        ("127.0.0.1:8000", Host("127.0.0.1", 8000)),
        ("[0:0::1]:8000", Host("[::1]", 8000)),
        ("localhost", Host("localhost", None)),
    ],
)
def test_well_formed_hosts_parse(value: str, host: Host) -> None:
    assert parse_host(value) == host


@pytest.mark.parametrize("value", MALFORMED)
def test_malformed_hosts_do_not_parse(value: str) -> None:
    assert parse_host(value) is None


@pytest.mark.parametrize(
    ("patterns", "host", "scheme", "allowed"),
    [
        ("files.example.com", "files.example.com", "http", True),
        ("files.example.com", "FILES.example.com:8000", "http", True),
        ("files.example.com", "other.example.com", "http", False),
        ("files.example.com", "evil.files.example.com", "http", False),
        ("*.example.com", "a.example.com", "http", True),
        ("*.example.com", "a.b.example.com", "http", True),
        ("*.example.com", "example.com", "http", False),
        ("*.example.com", "a.example.com.evil", "http", False),
        ("*.example.com", "aexample.com", "http", False),
        ("files.example.com:8443", "files.example.com:8443", "https", True),
        ("files.example.com:8443", "files.example.com:9443", "https", False),
        ("files.example.com:443", "files.example.com", "https", True),
        ("files.example.com:443", "files.example.com", "http", False),
        ("a.example, b.example", "b.example", "http", True),
        ("[::1]:8000", "[0::1]:8000", "http", True),
        ("", "anything.example", "http", True),
        ("*", "anything.example", "http", True),
    ],
)
def test_allowed_host_patterns(patterns: str, host: str, scheme: str, allowed: bool) -> None:
    parsed = parse_host(host)
    assert parsed is not None
    assert AllowedHosts.parse(patterns).allows(parsed, scheme) is allowed
