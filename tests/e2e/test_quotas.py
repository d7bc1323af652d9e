"""Quotas against a real Hypercorn: a declared length past the quota is
answered before the body is sent, and a chunked body is cut off as soon as
it passes; nothing is left either way."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.auth import TEST_ADMIN_KEY
from devtools.server import RunningServer, start_server
from devtools.stored import assert_server_holds, server_holds

QUOTA = 100_000


@pytest.fixture
def quota_server(tmp_path: Path) -> Iterator[RunningServer]:
    # The environment's admin key acts as the operator account, which the
    # default quota limits like any other.
    running = start_server(tmp_path / "server", {"QUART_APP_DEFAULT_QUOTA_BYTES": str(QUOTA)})
    try:
        # The operator account is made on its key's first use.
        head = f"GET /files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TEST_ADMIN_KEY}"
        assert exchange(running, head + "\r\n\r\n", b"")[0].startswith("HTTP/1.1 200")
        yield running
    finally:
        running.stop()


def exchange(server: RunningServer, head: str, body: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send the head and the start of a body, and read the answer that comes
    back without waiting for the rest."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head.encode() + body)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
        raw_head, _, rest = received.partition(b"\r\n\r\n")
        status, *fields = raw_head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
        while len(rest) < int(headers.get("content-length", "0")):
            rest += sock.recv(65536)
    return status, headers, rest


def request_head(target: str, *fields: str) -> str:
    lines = [
        f"PUT {target} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {TEST_ADMIN_KEY}",
        "Content-Type: application/octet-stream",
        *fields,
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


def test_a_declared_length_past_the_quota_is_answered_before_the_body(
    quota_server: RunningServer,
) -> None:
    before = server_holds(quota_server)
    status, headers, body = exchange(
        quota_server, request_head("/files/big", "Content-Length: 1000000000"), b"x" * 1000
    )
    assert status.startswith("HTTP/1.1 507")
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert problem["type"] == "urn:quart-app:problem:quota-exceeded"
    assert problem["remaining"] == QUOTA
    assert_server_holds(quota_server, before)


def test_a_chunked_body_past_the_quota_is_cut_off_and_leaves_nothing(
    quota_server: RunningServer,
) -> None:
    before = server_holds(quota_server)
    chunk = b"%x\r\n%s\r\n" % (50_000, b"y" * 50_000)
    status, _, body = exchange(
        quota_server,
        request_head("/files/chunked", "Transfer-Encoding: chunked"),
        chunk * 3 + b"0\r\n\r\n",
    )
    assert status.startswith("HTTP/1.1 507")
    assert json.loads(body)["quota"] == "bytes"
    assert_server_holds(quota_server, before)
