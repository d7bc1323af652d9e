"""Hostile input against a real Hypercorn, as one table.

Every case is sent as raw bytes over a socket. Each must get its expected
4xx as ``application/problem+json``, or, where the request is not valid
HTTP/1.1 and never reaches the app, Hypercorn's own bare 4xx and a closed
connection, or, where the hostile part is one the server must ignore (a date
that is not one), the request's ordinary 2xx. After every case: no row, no
blob, no temp or partial file, and the server still answers ``/healthz``.
At the end, no 5xx and no traceback in the whole log. Slowloris clients have
their own tests below the table.

Cases may name two resources made before the table runs (``seeded``): the
file KEPT_FILE, and a completed tus upload whose server-assigned id replaces
COMPLETED_UPLOAD in a case's bytes.
"""

# The table keeps one case to a line, however long.
# ruff: noqa: E501

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import httpx
import pytest

from devtools.auth import TEST_ADMIN_KEY, bearer
from devtools.server import RunningServer, start_server
from devtools.stored import assert_server_holds, server_holds

MIB = 1024 * 1024
IDLE_TIMEOUT = 1.5  # QUART_APP_BODY_IDLE_TIMEOUT of the server under test
BODY_DEADLINE = 4.0  # QUART_APP_BODY_DEADLINE
KEEP_ALIVE_TIMEOUT = 5.0  # hypercorn.toml keep_alive_timeout
BOUNDARY = "hostileboundary"
KEPT_FILE = "hostile-kept"
KEPT_BYTES = b"kept"
COMPLETED_UPLOAD = "completed-upload-id"
HUGE_YEAR = "Mon, 01 Jan 10000000000000000000 00:00:00 GMT"


@dataclass(frozen=True)
class Case:
    name: str
    request: bytes
    status: int
    # False: answered by Hypercorn (h11) before the app sees a request: a
    # bare response without a body, then the connection closes. None: either
    # (Hypercorn and the app race to answer the same status).
    problem: bool | None = True
    # Send the request, then stop sending without closing (a stalled client).
    stall: bool = False
    # Send the request, then shut down our sending side (a half-close).
    half_close: bool = False
    # The server may also just close the connection: the client is gone
    # mid-request, so HTTP leaves nothing to answer.
    or_closed: bool = False


def request(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    length: int | str | None = "auto",
    close: bool = True,
    key: str | None = TEST_ADMIN_KEY,
) -> bytes:
    """A raw HTTP/1.1 request. Header text is sent as latin-1, byte for byte,
    so a case can put any octet (CR included) where it likes. ``close``
    asks for ``Connection: close``; without it the server reads what follows
    the body as the next request. The key is sent unless ``key`` is None, so
    that each case reaches what it is about."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    if length == "auto":
        lines.append(f"Content-Length: {len(body)}")
    elif length is not None:
        lines.append(f"Content-Length: {length}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, size: int = 64 * 1024) -> bytes:
    pieces = [
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    ]
    return b"".join(pieces) + b"0\r\n\r\n"


Headers = list[tuple[str, str]]
CHUNKED: Headers = [("Transfer-Encoding", "chunked")]


def json_post(
    body: bytes,
    content_type: str | None = "application/json",
    headers: Headers | None = None,
    length: int | str | None = "auto",
    close: bool = True,
) -> bytes:
    given = [("Content-Type", content_type)] if content_type else []
    return request("POST", "/users", given + (headers or []), body, length, close)


def part(headers: str, data: bytes = b"x") -> bytes:
    return f"--{BOUNDARY}\r\n{headers}\r\n\r\n".encode("latin-1") + data + b"\r\n"


def file_part(filename: str = "a.txt", data: bytes = b"x", extra: str = "") -> bytes:
    return part(f'Content-Disposition: form-data; name="file"; filename="{filename}"{extra}', data)


def field_part(name: str, data: bytes = b"x") -> bytes:
    return part(f'Content-Disposition: form-data; name="{name}"', data)


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def form_post(
    body: bytes,
    content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
    headers: Headers | None = None,
    length: int | str | None = "auto",
    close: bool = True,
) -> bytes:
    given = [("Content-Type", content_type), *(headers or [])]
    return request("POST", "/files", given, body, length, close)


def raw_put(
    file_id: str,
    body: bytes = b"x",
    headers: Headers | None = None,
    length: int | str | None = "auto",
) -> bytes:
    return request("PUT", f"/files/{file_id}", headers, body, length)


def raw_post(disposition: str | None, body: bytes = b"x") -> bytes:
    headers: Headers = [("Content-Disposition", disposition)] if disposition is not None else []
    return request("POST", "/files", [("Content-Type", "text/plain"), *headers], body)


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def tus_create(*headers: tuple[str, str], version: str = "1.0.0") -> bytes:
    return request("POST", "/uploads", [("Tus-Resumable", version), *headers], length=0)


def get(target: str, *headers: tuple[str, str]) -> bytes:
    return request("GET", target, list(headers), length=None)


EMAIL = '"email": "hostile@example.com"'
DEEP = 100_000
CASES = [
    # Hostile JSON.
    Case("json: deep array nesting", json_post(b"[" * DEEP + b"]" * DEEP), 400),
    Case("json: deep object nesting", json_post(b'{"a":' * 5000 + b"1" + b"}" * 5000), 400),
    Case("json: 5000-digit integer", json_post(f'{{"name": 1{"0" * 5000}, {EMAIL}}}'.encode()), 400),
    Case("json: float overflowing to inf", json_post(f'{{"name": 1e999999, {EMAIL}}}'.encode()), 400),
    Case("json: invalid UTF-8", json_post(b'{"name": "\xff\xfe", "email": "a@example.com"}'), 400),
    Case("json: overlong UTF-8 slash", json_post(b'{"name": "\xc0\xaf", "email": "a@example.com"}'), 400),
    Case("json: lone surrogate escape", json_post(f'{{"name": "\\ud800", {EMAIL}}}'.encode()), 400),
    Case("json: duplicate keys", json_post(f'{{"name": "a", "name": "b", {EMAIL}}}'.encode()), 400),
    Case("json: keys differing in case", json_post(f'{{"name": "a", "Name": "b", {EMAIL}}}'.encode()), 400),
    Case("json: wrong types", json_post(b'{"name": 123, "email": ["a@example.com"]}'), 400),
    Case("json: nulls", json_post(b'{"name": null, "email": null}'), 400),
    Case("json: top-level array", json_post(b'[{"name": "a", "email": "a@example.com"}]'), 400),
    Case("json: top-level string", json_post(b'"hello"'), 400),
    Case("json: NaN", json_post(f'{{"name": NaN, {EMAIL}}}'.encode()), 400),
    Case("json: Infinity", json_post(f'{{"name": -Infinity, {EMAIL}}}'.encode()), 400),
    Case("json: empty body", json_post(b""), 400),
    Case("json: truncated", json_post(f'{{"name": "a", {EMAIL}'.encode()), 400),
    Case("json: trailing garbage", json_post(f'{{"name": "a", {EMAIL}}} x'.encode()), 400),
    Case("json: UTF-16", json_post(f'{{"name": "a", {EMAIL}}}'.encode("utf-16")), 400),
    Case("json: UTF-8 byte order mark", json_post(f'\ufeff{{"name": "a", {EMAIL}}}'.encode()), 400),
    Case("json: unknown member", json_post(f'{{"name": "a", "admin": true, {EMAIL}}}'.encode()), 400),
    Case("json: control characters in name", json_post(f'{{"name": "a\\u0000\\r\\n", {EMAIL}}}'.encode()), 400),
    Case("json: 10 kB email", json_post(f'{{"name": "a", "email": "{"a" * 10000}@example.com"}}'.encode()), 400),
    Case("json: over the size limit", json_post(b" " * (2 * MIB)), 413),
    Case("json: over the size limit, chunked", json_post(chunked(b" " * (2 * MIB)), headers=CHUNKED, length=None), 413),
    Case("json: sent as text/plain", json_post(f'{{"name": "a", {EMAIL}}}'.encode(), "text/plain"), 415),
    Case("json: no Content-Type", json_post(f'{{"name": "a", {EMAIL}}}'.encode(), None), 415),
    Case("json: bad body with an Idempotency-Key", json_post(b"{", headers=[("Idempotency-Key", "hostile-1")]), 400),
    Case("json: 10 kB Idempotency-Key", json_post(f'{{"name": "a", {EMAIL}}}'.encode(), headers=[("Idempotency-Key", "k" * 10000)]), 400),
    # Content-Length lies.
    Case("length: shorter than the JSON", json_post(f'{{"name": "a", {EMAIL}}}\r\n\r\n'.encode(), length=10, close=False), 400),
    Case("length: longer than the JSON, client stalls", json_post(f'{{"name": "a", {EMAIL}}}'.encode(), length=500), 408, stall=True),
    Case("length: longer than the PUT body, client stalls", raw_put("stall", b"abc", length=100), 408, stall=True),
    Case("length: longer than the PUT body, client half-closes", raw_put("half", b"abc", length=100), 400, problem=None, half_close=True, or_closed=True),
    Case("length: shorter than the form", form_post(form(file_part()), length=40, close=False), 400),
    Case("length: longer than the form, client stalls", form_post(form(file_part()), length=10000), 408, stall=True),
    Case("length: both Content-Length and chunked", json_post(b"0\r\n\r\n", headers=CHUNKED, length=3), 400),
    Case("length: two different values", json_post(b"{}", headers=[("Content-Length", "3")]), 400, problem=False),
    Case("length: negative", json_post(b"{}", length=-1), 400, problem=False),
    Case("length: not a number", json_post(b"{}", length="two"), 400, problem=False),
    Case("length: bad chunk size", json_post(b"zz\r\n{}\r\n0\r\n\r\n", headers=CHUNKED, length=None), 400, problem=False),
    # Malformed multipart.
    Case("multipart: no boundary parameter", form_post(form(file_part()), "multipart/form-data"), 400),
    Case("multipart: wrong boundary", form_post(form(file_part()), "multipart/form-data; boundary=other"), 400),
    Case("multipart: no closing boundary", form_post(file_part()), 400),
    Case("multipart: part without Content-Disposition", form_post(form(part("Content-Type: text/plain"))), 400),
    Case("multipart: 2000 file parts", form_post(form(*(file_part(f"{i}.txt") for i in range(2000)))), 413),
    Case("multipart: 2000 text fields", form_post(form(*(field_part(f"f{i}") for i in range(2000)), file_part())), 413),
    Case("multipart: 20 kB part header", form_post(form(part("X-Big: " + "a" * 20000))), 400),
    Case("multipart: 1000 part headers", form_post(form(part("\r\n".join(f"X-{i}: a" for i in range(1000))))), 400),
    Case("multipart: nested multipart", form_post(form(file_part(extra="\r\nContent-Type: multipart/mixed; boundary=x"))), 400),
    Case("multipart: empty body", form_post(b""), 400),
    Case("multipart: boundary of 100 characters", form_post(form(file_part()).replace(BOUNDARY.encode(), b"b" * 100), "multipart/form-data; boundary=" + "b" * 100), 400),
    Case("multipart: LF-only line endings", form_post(form(file_part()).replace(b"\r\n", b"\n")), 400),
    Case("multipart: no file part", form_post(form(field_part("note"))), 400),
    Case("multipart: file part without filename", form_post(form(field_part("file"))), 400),
    Case("multipart: field over the size limit", form_post(form(field_part("note", b"x" * 100_000), file_part())), 413),
    Case("multipart: file over the upload limit", form_post(form(file_part(data=b"x" * (2 * MIB)))), 413),
    Case("multipart: file over the upload limit, chunked", form_post(chunked(form(file_part(data=b"x" * (2 * MIB)))), headers=CHUNKED, length=None), 413),
    Case("multipart: multipart/mixed", form_post(form(file_part()), f"multipart/mixed; boundary={BOUNDARY}"), 415),
    Case("multipart: traversal-only filename", form_post(form(file_part("../"))), 400),
    Case("multipart: empty filename", form_post(form(file_part(""))), 400),
    Case("multipart: 1000-character filename", form_post(form(file_part("n" * 1000))), 400),
    # Header injection through filenames and tus metadata.
    Case("injection: CRLF inside a part's filename", form_post(form(file_part("a\r\nX-Injected: 1"))), 400),
    Case("injection: CRLF in a part's filename*", form_post(form(file_part(extra="; filename*=UTF-8''a%0D%0ASet-Cookie%3A%20x%3D1"))), 400),
    Case("injection: CRLF in a raw filename*", raw_post("attachment; filename*=UTF-8''a%0D%0ASet-Cookie%3A%20x%3D1"), 400),
    Case("injection: LF in a PUT filename*", raw_put("inj", headers=[("Content-Disposition", "attachment; filename*=UTF-8''a%0ASet-Cookie%3A%20x")]), 400),
    Case("injection: bare CR in a header", raw_put("inj", headers=[("Content-Disposition", 'attachment; filename="a\rb"')]), 400, problem=False),
    Case("injection: unclosed quote in a filename", raw_post('attachment; filename="a.txt'), 400),
    Case("injection: CRLF in tus metadata filename", tus_create(("Upload-Length", "5"), ("Upload-Metadata", "filename " + b64("a\r\nSet-Cookie: x=1"))), 400),
    Case("injection: bare CR in Upload-Metadata", tus_create(("Upload-Length", "5"), ("Upload-Metadata", "filename YQ==\rSet-Cookie: x")), 400, problem=False),
    Case("tus: metadata not base64", tus_create(("Upload-Length", "5"), ("Upload-Metadata", "filename ***")), 400),
    Case("tus: duplicate metadata keys", tus_create(("Upload-Length", "5"), ("Upload-Metadata", "filename YQ==,filename Yg==")), 400),
    Case("tus: 10 kB metadata filename", tus_create(("Upload-Length", "5"), ("Upload-Metadata", "filename " + b64("n" * 7500))), 400),
    Case("tus: negative Upload-Length", tus_create(("Upload-Length", "-5")), 400),
    Case("tus: 5000-digit Upload-Length", tus_create(("Upload-Length", "9" * 5000)), 400),
    Case("tus: Upload-Length over the limit", tus_create(("Upload-Length", str(2 * MIB))), 413),
    Case("tus: Upload-Length and Upload-Defer-Length", tus_create(("Upload-Length", "5"), ("Upload-Defer-Length", "1")), 400),
    Case("tus: no length at all", tus_create(), 400),
    Case("tus: unsupported version", tus_create(("Upload-Length", "5"), version="0.2.2"), 412),
    # Traversal and oversized ids.
    Case("ids: PUT to ..", raw_put("%2e%2e"), 400),
    Case("ids: PUT to an encoded traversal", raw_put("..%2F..%2Fetc%2Fpasswd"), 404),
    Case("ids: PUT to a 129-character id", raw_put("a" * 129), 400),
    Case("ids: PUT to a 10 kB id", raw_put("a" * 10_000), 400),
    Case("ids: PUT to an id with NUL", raw_put("a%00b"), 400),
    Case("ids: GET a file by traversal", get("/files/..%2F..%2Fetc%2Fpasswd"), 404),
    Case("ids: GET content of ..", get("/files/%2e%2e/content"), 404),
    Case("ids: DELETE by traversal", request("DELETE", "/files/..%2Fblobs", length=None), 404),
    Case("ids: user id past 64 bits", get("/users/99999999999999999999999999"), 404),
    Case("ids: negative user id", get("/users/-1"), 404),
    Case("ids: 10 kB upload id", get("/uploads/" + "u" * 10_000, ("Tus-Resumable", "1.0.0")), 404),
    Case("ids: PATCH an upload by traversal", request("PATCH", "/uploads/..%2Fpartial%2Fx", [("Tus-Resumable", "1.0.0"), ("Upload-Offset", "0"), ("Content-Type", "application/offset+octet-stream")], b"x"), 404),
    Case("ids: batch by traversal", get("/batches/..%2F..%2F"), 404),
    Case("ids: forged cursor", get("/files?cursor=AAAA.BBBB"), 400),
    Case("ids: cursor of invalid UTF-8", get("/users?cursor=%ff%fe"), 400),
    Case("ids: 5000-digit limit", get("/files?limit=" + "9" * 5000), 400),
    Case("ids: superscript digit limit", get("/files?limit=%C2%B2"), 400),
    # Enormous heads.
    Case("head: one 20 kB header field", get("/healthz", ("X-Big", "a" * 20_000)), 431),
    Case("head: 1000 header fields", get("/healthz", *((f"X-H{i}", "a" * 20) for i in range(1000))), 431),
    Case("head: 20 kB request target", get("/healthz?" + "q" * 20_000), 414),
    Case("head: 200 kB header field", get("/healthz", ("X-Big", "a" * 200_000)), 431, problem=False),
    # Not HTTP at all.
    Case("http: TLS handshake on the plain port", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"x" * 100, 400, problem=False),
    Case("http: no Host header", b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", 400, problem=False),
    Case("http: NUL in the method", b"G\x00T /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400, problem=False),
    # Dates that are not dates, and writes past a completed upload.
    Case("dates: If-Modified-Since with a 20-digit year", get(f"/files/{KEPT_FILE}/content", ("If-Modified-Since", HUGE_YEAR), ("Range", "bytes=99-")), 416),
    Case("dates: If-Modified-Since with a 20-digit hour", get(f"/files/{KEPT_FILE}/content", ("If-Modified-Since", "Mon, 01 Jan 2001 99999999999999999999:00:00 GMT"), ("Range", "bytes=99-")), 416),
    Case("dates: If-Range with a 20-digit year", get(f"/files/{KEPT_FILE}/content", ("If-Range", HUGE_YEAR), ("Range", "bytes=0-0")), 200),
    Case("dates: If-Range with a 20-digit zone offset", get(f"/files/{KEPT_FILE}/content", ("If-Range", "Mon, 01 Jan 2001 00:00:00 +99999999999999999999"), ("Range", "bytes=0-0")), 200),
    Case("tus: PATCH bytes past a completed upload", request("PATCH", f"/uploads/{COMPLETED_UPLOAD}", [("Tus-Resumable", "1.0.0"), ("Upload-Offset", str(len(KEPT_BYTES))), ("Content-Type", "application/offset+octet-stream")], b"more"), 413),
    Case("tus: empty PATCH at the end of a completed upload", request("PATCH", f"/uploads/{COMPLETED_UPLOAD}", [("Tus-Resumable", "1.0.0"), ("Upload-Offset", str(len(KEPT_BYTES))), ("Content-Type", "application/offset+octet-stream")]), 204),
    Case("http: method override to DELETE the collection", request("POST", "/uploads", [("Tus-Resumable", "1.0.0"), ("X-HTTP-Method-Override", "DELETE")], b"x"), 405),
]  # fmt: skip


@dataclass
class Answer:
    status: int | None
    headers: dict[str, str]
    body: bytes


def exchange(port: int, case: Case, timeout: float = 20.0) -> Answer:
    """Send the case's bytes (from a thread: the server may answer and close
    before reading them all) and read until the server closes."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(timeout)

    def send() -> None:
        try:
            sock.sendall(case.request)
            if case.half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered early and closed: what some cases expect

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = bytearray()
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
        sender.join(timeout)
    return parse_answer(bytes(received))


def parse_answer(data: bytes) -> Answer:
    """The final response in ``data`` (after any 100 Continue)."""
    while data.startswith(b"HTTP/1.1 1"):
        data = data.partition(b"\r\n\r\n")[2]
    if not data:
        return Answer(None, {}, b"")
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(body)))
    return Answer(int(status_line.split()[1]), headers, body[:length])


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("hostile"),
        {
            "QUART_APP_MAX_UPLOAD_BYTES": str(MIB),
            "QUART_APP_BODY_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
            "QUART_APP_BODY_DEADLINE": str(BODY_DEADLINE),
        },
    )
    try:
        yield running
        statuses = [line["status"] for line in running.access_lines()]
        assert not [s for s in statuses if (s or 0) >= 500], running.log()[-3000:]
        assert "Traceback" not in running.log()
    finally:
        running.stop()


@pytest.fixture(scope="module")
def seeded(hostile_server: RunningServer) -> str:
    """Make KEPT_FILE and a completed upload; the upload's id."""
    with httpx.Client(base_url=hostile_server.url, headers=bearer(), timeout=10) as client:
        assert client.put(f"/files/{KEPT_FILE}", content=KEPT_BYTES).status_code == 201
        created = client.post(
            "/uploads",
            content=KEPT_BYTES,
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Length": str(len(KEPT_BYTES)),
                "Content-Type": "application/offset+octet-stream",
            },
        )
    assert created.status_code == 201 and created.headers["Upload-Offset"] == str(len(KEPT_BYTES))
    upload_id: str = created.headers["Location"].rsplit("/", 1)[1]
    return upload_id


def test_the_table_has_at_least_60_distinct_cases() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)) >= 60


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_request(hostile_server: RunningServer, seeded: str, case: Case) -> None:
    case = replace(case, request=case.request.replace(COMPLETED_UPLOAD.encode(), seeded.encode()))
    before = server_holds(hostile_server)
    started = time.monotonic()
    answer = exchange(hostile_server.port, case)
    if answer.status is None and case.or_closed:
        assert_server_holds(hostile_server, before)
        return
    assert answer.status == case.status, (answer, hostile_server.log()[-2000:])
    if case.problem is None:
        case = replace(case, problem="content-type" in answer.headers)
    if case.status < 400:
        assert answer.headers.get("content-type") != "application/problem+json", answer
    elif case.problem:
        assert answer.headers.get("content-type") == "application/problem+json", answer
        problem = json.loads(answer.body)
        assert problem["status"] == case.status
        assert problem["title"] and problem["detail"]
    else:
        assert answer.body == b""
        assert answer.headers.get("connection", "").lower() == "close"
    if case.stall:
        assert time.monotonic() - started >= IDLE_TIMEOUT * 0.9
    assert_server_holds(hostile_server, before)
    assert httpx.get(f"{hostile_server.url}/healthz", timeout=5).status_code == 200


def dribble(port: int, head: bytes, pieces: list[bytes], every: float) -> tuple[float, bytes]:
    """Send ``head``, then one piece every ``every`` seconds until the server
    closes the connection; the seconds that took and what it answered."""
    started = time.monotonic()
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        sock.settimeout(every)
        for piece in pieces:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                chunk = None
            except ConnectionResetError:
                break
            if chunk is not None:
                received += chunk
                if not chunk:
                    break
                continue
            try:
                sock.sendall(piece)
            except OSError:
                break
        else:
            raise AssertionError("the server kept the slow client past all its pieces")
    return time.monotonic() - started, bytes(received)


def test_slowloris_headers_are_dropped_while_others_are_served(
    hostile_server: RunningServer,
) -> None:
    """A client that never finishes its headers is closed by Hypercorn's
    keep_alive_timeout (the connection counts as idle until a whole request
    head has arrived), however often it sends a byte."""
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    pieces = [b"X-Slow-%d: a\r\n" % i for i in range(int(KEEP_ALIVE_TIMEOUT * 2 / 0.25) + 20)]
    results: list[tuple[float, bytes]] = []
    clients = [
        threading.Thread(
            target=lambda: results.append(dribble(hostile_server.port, head, pieces, 0.25))
        )
        for _ in range(8)
    ]
    for client in clients:
        client.start()
    served = 0
    with httpx.Client(base_url=hostile_server.url, headers=bearer(), timeout=5) as others:
        while any(client.is_alive() for client in clients):
            assert others.get("/healthz").status_code == 200
            assert others.post("/users", json={"name": "x"}).status_code == 400
            served += 1
            time.sleep(0.05)
    assert len(results) == 8
    for seconds, answer in results:
        assert KEEP_ALIVE_TIMEOUT * 0.9 <= seconds <= KEEP_ALIVE_TIMEOUT + 5, seconds
        assert b"200" not in answer.partition(b"\r\n")[0]
    assert served > 10


def test_a_body_trickled_past_the_deadline_is_cut_off(hostile_server: RunningServer) -> None:
    """One byte more often than the idle timeout: the body deadline ends it
    with a 408, nothing is stored, and others are served meanwhile."""
    before = server_holds(hostile_server)
    head = raw_put("trickle", b"", length=1000)
    pieces = [b"x"] * int(BODY_DEADLINE * 2 / 0.5 + 20)
    done: list[tuple[float, bytes]] = []
    client = threading.Thread(
        target=lambda: done.append(dribble(hostile_server.port, head, pieces, 0.5))
    )
    client.start()
    while client.is_alive():
        assert httpx.get(f"{hostile_server.url}/healthz", timeout=5).status_code == 200
        time.sleep(0.1)
    seconds, answer = done[0]
    assert parse_answer(answer).status == 408
    assert BODY_DEADLINE * 0.9 <= seconds <= BODY_DEADLINE + 5
    assert_server_holds(hostile_server, before)
