"""Hostile Authorization fields as raw bytes against a real Hypercorn: what
the HTTP parser refuses (CR, NUL, a head over 16 KiB) never reaches the app;
what it passes on is a 401. Never a 500, nothing
stored, and the server still serves a good key afterwards."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from devtools.auth import TEST_ADMIN_KEY
from devtools.server import RunningServer, start_server
from devtools.stored import assert_server_holds, server_holds

KEY = TEST_ADMIN_KEY.encode()


def raw_request(*authorization: bytes) -> bytes:
    """An upload of five bytes with these Authorization fields, octet for octet."""
    fields = b"".join(b"Authorization: " + value + b"\r\n" for value in authorization)
    return (
        b"POST /files HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + fields
        + b"Content-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt\r\n"
        b"Content-Length: 5\r\nConnection: close\r\n\r\nhello"
    )


def status_of(port: int, request: bytes) -> int:
    """The status the server answers (0: it closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        with contextlib.suppress(OSError):  # answered and closed before reading it all
            sock.sendall(request)
        received = bytearray()
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    if not received:
        return 0
    return int(received.split(b" ", 2)[1])


FOLDED_KEY = b"Bearer " + KEY[:9] + b"\r\n " + KEY[9:]
CASES = [
    ("100 KB key", raw_request(b"Bearer " + b"a" * 100_000), {431}),
    ("15 KB key", raw_request(b"Bearer " + b"a" * 15_000), {401}),
    ("15 KB after a good key", raw_request(b"Bearer " + KEY + b"a" * 15_000), {401}),
    ("bytes over 0x7f", raw_request(b"Bearer \xff\xfe\xc3\xa9" + KEY), {401}),
    ("UTF-8 in the key", raw_request(b"Bearer " + KEY[:-1] + "é".encode()), {401}),
    ("CR inside", raw_request(b"Bearer " + KEY + b"\rX-Injected: 1"), {400}),
    # h11 takes a bare LF as the end of a line (RFC 9112 section 2.2 lets a
    # recipient do so): the field ends there and the rest is a field of its own.
    ("LF inside", raw_request(b"Bearer " + KEY + b"\nX-Injected: 1"), {201}),
    ("LF after junk", raw_request(b"Bearer junk\nX-Injected: 1"), {401}),
    ("NUL inside", raw_request(b"Bearer " + KEY + b"\x00"), {400}),
    # RFC 9112 section 5.2: a server rejects an obsolete line fold or reads
    # it as spaces; h11 does the latter.
    ("obsolete line fold", raw_request(b"Bearer\r\n " + KEY), {201}),
    ("obsolete line fold, junk", raw_request(b"Bearer\r\n junk"), {401}),
    ("obsolete line fold in the key", raw_request(FOLDED_KEY), {401}),
    ("many spaces", raw_request(b"Bearer" + b" " * 8000), {401}),
    ("Bearer alone", raw_request(b"Bearer"), {401}),
    ("Bearer, two spaces, x", raw_request(b"Bearer  x"), {401}),
    ("wrong scheme", raw_request(b"Basic " + KEY), {401}),
    ("two fields, both good", raw_request(b"Bearer " + KEY, b"Bearer " + KEY), {401}),
    ("good key and junk", raw_request(b"Bearer " + KEY + b" junk"), {401}),
    ("empty", raw_request(b""), {401}),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("hostile-keys"), {"QUART_APP_AUTH_FAILURES_PER_MINUTE": "0"}
    )
    try:
        yield running
        assert not [line for line in running.access_lines() if (line["status"] or 0) >= 500]
        assert "Traceback" not in running.log()
    finally:
        running.stop()


@pytest.mark.parametrize(("name", "request_bytes", "statuses"), CASES, ids=[c[0] for c in CASES])
def test_a_hostile_authorization_field_is_refused(
    server: RunningServer, name: str, request_bytes: bytes, statuses: set[int]
) -> None:
    before = server_holds(server)
    status = status_of(server.port, request_bytes)
    assert status in statuses
    if status >= 400:
        assert_server_holds(server, before)
    # The good key still works, on a new connection.
    assert status_of(server.port, raw_request(b"Bearer " + KEY)) == 201
