"""Connections against a real Hypercorn: long downloads, clients that stop
reading or trickle, early answers to large bodies, the connection cap, and
shutdown with uploads still arriving (quart_app/edge/server_internals.py and the
body rules in quart_app/edge/bodies.py). tests/unit/test_connections.py pins
the Hypercorn and Quart internals those modules replace."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.auth import bearer, bearer_line
from devtools.server import RunningServer, rss_mib, start_server
from devtools.tls import self_signed_certificate

MIB = 1024 * 1024
AUTH = bearer_line().encode()


# -- helpers --------------------------------------------------------------------


def upload(server: RunningServer, file_id: str, data: bytes) -> None:
    response = httpx.put(
        f"{server.url}/files/{file_id}", content=data, headers=bearer(), timeout=30
    )
    assert response.status_code == 201, response.text


def small_receive_buffer() -> socket.socket:
    """A client socket whose kernel buffer holds little, so that reading
    slowly is felt by the server rather than absorbed by the kernel."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    return sock


def read_response(
    sock: socket.socket, pace_bytes_per_s: float | None = None
) -> tuple[bytes, bytes]:
    """Head and body of one response (Content-Length framed), read at most
    at ``pace_bytes_per_s``; the body is short if the server closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            return data, b""
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(v for k, v in headers_of(head) if k == "content-length"))
    started = time.monotonic()
    while len(body) < length:
        try:
            piece = sock.recv(min(65536, length - len(body)))
        except ConnectionResetError:
            break
        if not piece:
            break
        body += piece
        if pace_bytes_per_s is not None:
            ahead = len(body) / pace_bytes_per_s - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    return head, body


def headers_of(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0


def assert_clean_log(server: RunningServer) -> None:
    log = server.log()
    assert "Traceback" not in log
    assert "CancelledError" not in log
    assert '"status": 500' not in log


# -- 1. long downloads ------------------------------------------------------------


def test_a_steady_download_outlasts_the_old_read_timeout(tmp_path: Path) -> None:
    """Hypercorn's read_timeout (2 s here) cut a response a client was still
    reading; now only a connection where nothing moves is idle."""
    server = start_server(
        tmp_path / "server",
        {"QUART_APP_IDLE_TIMEOUT": "2", "QUART_APP_TRANSFER_RATE_WINDOW": "1"},
        args=["--read-timeout", "2"],
    )
    try:
        data = os.urandom(16 * MIB)
        upload(server, "long", data)
        with small_receive_buffer() as sock:
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(
                b"GET /files/long/content HTTP/1.1\r\nHost: 127.0.0.1\r\n" + AUTH + b"\r\n"
            )
            started = time.monotonic()
            head, body = read_response(sock, pace_bytes_per_s=3.2 * MIB)
            took = time.monotonic() - started
        assert status_of(head) == 200
        assert took >= 4.0, took  # at least twice the timeout
        assert len(body) == len(data)
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    finally:
        server.stop()


def test_a_steady_http2_download_outlasts_the_old_read_timeout(tmp_path: Path) -> None:
    tls = self_signed_certificate(tmp_path)
    server = start_server(
        tmp_path / "server",
        {"QUART_APP_IDLE_TIMEOUT": "2", "QUART_APP_TRANSFER_RATE_WINDOW": "1"},
        args=["--read-timeout", "2"],
        tls=tls,
    )
    try:
        data = os.urandom(12 * MIB)
        upload(server, "long", data)
        digest = hashlib.sha256()
        received = 0
        started = time.monotonic()
        # HTTP/2 over TLS (ALPN); flow control paces it.
        with (
            httpx.Client(
                http2=True,
                verify=ssl.create_default_context(cafile=tls[0]),
                headers=bearer(),
                timeout=10,
            ) as client,
            client.stream("GET", f"{server.tls_url}/files/long/content") as response,
        ):
            assert response.http_version == "HTTP/2"
            for chunk in response.iter_bytes(64 * 1024):
                digest.update(chunk)
                received += len(chunk)
                ahead = received / (2.5 * MIB) - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        assert time.monotonic() - started >= 4.0
        assert received == len(data)
        assert digest.digest() == hashlib.sha256(data).digest()
    finally:
        server.stop()


def test_a_client_that_stops_reading_is_dropped(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "server",
        {"QUART_APP_TRANSFER_RATE_WINDOW": "1", "QUART_APP_IDLE_TIMEOUT": "2"},
    )
    try:
        upload(server, "big", os.urandom(32 * MIB))
        with small_receive_buffer() as sock:
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"GET /files/big/content HTTP/1.1\r\nHost: 127.0.0.1\r\n" + AUTH + b"\r\n")
            time.sleep(4)  # reads nothing: well past the window and the idle time
            sock.settimeout(10)
            head, body = read_response(sock)
        assert status_of(head) == 200
        assert len(body) < 32 * MIB  # cut off: the server gave up on us
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        server.stop()


# -- 3. early answers while a body is still coming --------------------------------


BIG = 50 * 1000 * 1000


def early_refusals(server: RunningServer, upload_id: str) -> list[tuple[bytes, int]]:
    """Requests that are answered before their 50 MB body is read."""
    tus = "Tus-Resumable: 1.0.0\r\n"
    octets = "Content-Type: application/offset+octet-stream\r\n"
    heads = [
        (f"PUT /files/taken HTTP/1.1\r\nIf-None-Match: *\r\nContent-Length: {BIG}\r\n", 412),
        (f'PUT /files/taken HTTP/1.1\r\nIf-Match: "nope"\r\nContent-Length: {BIG}\r\n', 412),
        (f"PUT /files/..bad HTTP/1.1\r\nContent-Length: {BIG}\r\n", 400),
        (f"POST /filez HTTP/1.1\r\nContent-Length: {BIG}\r\n", 404),
        (f"PATCH /files HTTP/1.1\r\nContent-Length: {BIG}\r\n", 405),
        (f"POST /files HTTP/1.1\r\nContent-Length: {BIG + 2 * MIB}\r\n", 413),
        (
            f"POST /files HTTP/1.1\r\nContent-Type: multipart/mixed\r\nContent-Length: {BIG}\r\n",
            415,
        ),
        (f"PATCH /uploads/{upload_id} HTTP/1.1\r\n{tus}Content-Length: {BIG}\r\n", 415),
        (
            f"PATCH /uploads/{upload_id} HTTP/1.1\r\n{tus}{octets}Upload-Offset: 7\r\n"
            f"Content-Length: {BIG}\r\n",
            409,
        ),
        (
            f"PATCH /uploads/nosuch HTTP/1.1\r\n{tus}{octets}Upload-Offset: 0\r\n"
            f"Content-Length: {BIG}\r\n",
            404,
        ),
    ]
    key = bearer_line()
    cases = [((head + f"Host: 127.0.0.1\r\n{key}\r\n").encode(), status) for head, status in heads]
    # No key: refused before the body is read, as the others.
    keyless = f"PUT /files/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {BIG}\r\n\r\n"
    cases.append((keyless.encode(), 401))
    # Refused before Quart sees it (edge/host_guard.py), its body unread.
    bad_host = f"PUT /files/x HTTP/1.1\r\nHost: evil.example/@x\r\nContent-Length: {BIG}\r\n\r\n"
    return [*cases, (bad_host.encode(), 400)]


def send_big_and_read_answer(port: int, head: bytes) -> tuple[int, float]:
    """Send the head and up to 50 MB of body while reading the answer;
    returns the status and the seconds until it arrived."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        started = time.monotonic()
        answer: list[tuple[int, float]] = []

        def read() -> None:
            data = b""
            with_timeout = sock.dup()
            with_timeout.settimeout(20)
            try:
                while b"\r\n" not in data:
                    piece = with_timeout.recv(4096)
                    if not piece:
                        break
                    data += piece
            except OSError:
                pass
            finally:
                with_timeout.close()
            answer.append((status_of(data), time.monotonic() - started))

        reader = threading.Thread(target=read)
        reader.start()
        chunk = b"x" * MIB
        sent = 0
        try:
            while sent < BIG and reader.is_alive():
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server closed after its answer: expected
        reader.join(30)
    return answer[0] if answer else (0, 0.0)


def test_early_answers_to_large_bodies_close_cleanly(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "server",
        {"QUART_APP_MAX_UPLOAD_BYTES": str(BIG), "QUART_APP_LINGER_SECONDS": "1"},
    )
    try:
        upload(server, "taken", b"exists")
        created = httpx.post(
            f"{server.url}/uploads",
            headers={"Tus-Resumable": "1.0.0", "Upload-Length": "100", **bearer()},
        )
        assert created.status_code == 201
        upload_id = created.headers["Location"].rsplit("/", 1)[1]
        cases = early_refusals(server, upload_id)
        cases = (cases * 2)[:20]
        results: list[tuple[int, int, float]] = []

        def run(head: bytes, expected: int) -> None:
            status, seconds = send_big_and_read_answer(server.port, head)
            results.append((expected, status, seconds))

        threads = [threading.Thread(target=run, args=case) for case in cases]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(results) == 20
        for expected, status, seconds in results:
            assert status == expected
            assert seconds < 5, seconds
        # Within the linger bound, no connection of those is left open.
        time.sleep(2)
        states = ("state", "established", "state", "close-wait")
        sockets = subprocess.run(
            ["ss", "-Htn", *states, f"sport = :{server.port}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert sockets.strip() == "", sockets
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        assert server.process is not None
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(15)
        assert time.monotonic() - started < 1.0
        assert server.process.returncode == 0
        assert_clean_log(server)
        assert list((server.storage_dir / "tmp").iterdir()) == []
    finally:
        server.stop()


# -- 5. stalled clients ----------------------------------------------------------


def test_a_trickled_upload_gets_408_and_leaves_nothing(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "server",
        {"QUART_APP_TRANSFER_RATE_WINDOW": "1", "QUART_APP_MIN_TRANSFER_RATE": "1024"},
    )
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                b"PUT /files/slow HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + AUTH
                + b"Content-Length: 10000000\r\n\r\n"
                + b"x" * 64 * 1024
            )
            started = time.monotonic()
            sock.settimeout(0.2)
            data = b""
            while time.monotonic() - started < 10 and b"\r\n\r\n" not in data:
                try:
                    sock.send(b"x")  # one byte every 0.2 s: 5 bytes a second
                    data += sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(dict(headers_of(head)).get("content-length", "0"))
            sock.settimeout(5)
            while len(body) < length:  # the body may follow the head later
                piece = sock.recv(65536)
                if not piece:
                    break
                body += piece
        assert status_of(head) == 408
        assert time.monotonic() - started < 5
        assert "slower than 1024 bytes a second" in body.decode()
        assert list((server.storage_dir / "tmp").iterdir()) == []
        assert httpx.get(f"{server.url}/files/slow", headers=bearer()).status_code == 404
    finally:
        server.stop()


def test_connections_past_the_cap_get_503_with_retry_after(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "server",
        {"QUART_APP_MAX_CONNECTIONS": "5", "QUART_APP_MIN_TRANSFER_RATE": "0"},
    )
    try:
        time.sleep(0.5)  # the launcher's own /healthz connection has closed
        held = []
        for index in range(5):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(
                b"PUT /files/held%d HTTP/1.1\r\nHost: 127.0.0.1\r\n%bContent-Length: 10\r\n\r\nx"
                % (index, AUTH)
            )
            held.append(sock)
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", server.port)) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            extra.settimeout(5)
            head, body = read_response(extra)
        assert status_of(head) == 503
        headers = dict(headers_of(head))
        assert headers["content-type"] == "application/problem+json"
        assert headers["x-content-type-options"] == "nosniff"
        assert int(headers["retry-after"]) >= 1
        assert json.loads(body)["status"] == 503
        for sock in held:
            sock.settimeout(0.05)
            with pytest.raises(TimeoutError):
                sock.recv(100)  # still being served: no answer yet
            sock.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{server.url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        server.stop()


@pytest.fixture
def many_sockets() -> Iterator[None]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_stalled_clients_cost_memory_that_is_returned(tmp_path: Path, many_sockets: None) -> None:
    """300 clients that stop reading a download and 100 that trickle an
    upload: /healthz keeps answering, they are dropped, and the worker's
    memory comes back near its idle figure."""
    server = start_server(
        tmp_path / "server", {"QUART_APP_TRANSFER_RATE_WINDOW": "1", "QUART_APP_IDLE_TIMEOUT": "3"}
    )
    clients: list[socket.socket] = []
    try:
        upload(server, "big", os.urandom(4 * MIB))
        for _ in range(20):
            httpx.get(f"{server.url}/healthz")
        pid = server.worker_pid()
        idle = rss_mib(pid)
        for _ in range(300):
            sock = small_receive_buffer()
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"GET /files/big/content HTTP/1.1\r\nHost: 127.0.0.1\r\n" + AUTH + b"\r\n")
            clients.append(sock)
        for index in range(100):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(
                b"PUT /files/t%d HTTP/1.1\r\nHost: 127.0.0.1\r\n%bContent-Length: 100000\r\n\r\nx"
                % (index, AUTH)
            )
            clients.append(sock)
        peak = rss_mib(pid)
        slowest = 0.0
        for _ in range(15):
            started = time.monotonic()
            assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            peak = max(peak, rss_mib(pid))
            time.sleep(0.2)
        assert slowest < 1.0, slowest
        deadline = time.monotonic() + 15
        while rss_mib(pid) > idle + 48 and time.monotonic() < deadline:
            httpx.get(f"{server.url}/healthz")
            time.sleep(0.5)
        after = rss_mib(pid)
        assert after <= idle + 48, (idle, peak, after)
        assert list((server.storage_dir / "tmp").iterdir()) == []
    finally:
        for sock in clients:
            sock.close()
        server.stop()


# -- 12. shutdown with uploads still arriving --------------------------------------


def trickle_put(port: int, file_id: str, results: list[tuple[str, int]]) -> None:
    """A PUT of 8 MB sent at ~200 KB/s: it cannot finish before shutdown."""
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                f"PUT /files/{file_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n{bearer_line()}"
                f"Content-Length: {8 * 1000 * 1000}\r\n\r\n".encode()
            )
            sock.settimeout(0.05)
            data = b""
            for _ in range(400):
                with contextlib.suppress(TimeoutError):
                    sock.sendall(b"x" * 10_000)
                try:
                    piece = sock.recv(65536)
                    if not piece:
                        break
                    data += piece
                except TimeoutError:
                    continue
            results.append((file_id, status_of(data)))
    except OSError:
        results.append((file_id, 0))  # closed: allowed


def test_sigterm_with_uploads_running_answers_503_or_closes(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", args=["--graceful-timeout", "3"])
    try:
        results: list[tuple[str, int]] = []
        threads = [
            threading.Thread(target=trickle_put, args=(server.port, f"s{i}", results))
            for i in range(4)
        ]
        for thread in threads:
            thread.start()
        time.sleep(1)
        assert server.process is not None
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(15)
        stopped_in = time.monotonic() - started
        for thread in threads:
            thread.join(30)
        assert len(results) == 4
        assert all(status in (503, 0) for _, status in results), results
        assert stopped_in < 3 + 2, stopped_in
        assert server.process.returncode == 0
        assert_clean_log(server)
        assert list((server.storage_dir / "tmp").iterdir()) == []
        assert list((server.storage_dir / "blobs").rglob("*.*")) == []
    finally:
        server.stop()


def steady_put(port: int, file_id: str, results: list[tuple[str, int]]) -> None:
    """A PUT of 3 MB sent at ~1 MB/s: it outlasts the shutdown signal but
    not the graceful timeout."""
    size, chunk = 3 * 1000 * 1000, 100_000
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                f"PUT /files/{file_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n{bearer_line()}"
                f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode()
            )
            for _ in range(size // chunk):
                sock.sendall(b"y" * chunk)
                time.sleep(0.1)
            sock.settimeout(20)
            head, _ = read_response(sock)
            results.append((file_id, status_of(head)))
    except OSError:
        results.append((file_id, 0))


def test_sigterm_lets_every_worker_finish_its_uploads(tmp_path: Path) -> None:
    """`serve --workers 2`: after SIGTERM each worker finishes the uploads
    it has (within graceful_timeout, 30 s in hypercorn.toml) and says so.
    Hypercorn 0.18's own supervisor waited for the first worker to exit and
    killed the others at once, cutting their uploads (ops/supervisor.py)."""
    server = start_server(tmp_path / "server", args=["--workers", "2"], serve=True)
    try:
        results: list[tuple[str, int]] = []
        threads = [
            threading.Thread(target=steady_put, args=(server.port, f"w{i}", results))
            for i in range(6)
        ]
        for thread in threads:
            thread.start()
        time.sleep(1)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(40)
        for thread in threads:
            thread.join(30)
        assert sorted(results) == [(f"w{i}", 201) for i in range(6)], server.log()
        assert server.process.returncode == 0
        lines = [json.loads(x) for x in server.log().splitlines() if x.startswith("{")]
        stopped = [x for x in lines if x.get("message") == "worker stopped"]
        assert len(stopped) == 2, server.log()
        assert sum(x["requests_drained"] for x in stopped) >= 6
        assert_clean_log(server)
    finally:
        server.stop()


def test_an_early_answer_to_a_client_that_sends_nothing_more_lingers_briefly(
    tmp_path: Path,
) -> None:
    """The reader was already waiting (with the idle timeout) when the
    answer went out: the lingering bound applies to that wait too, and a
    shutdown does not wait for the graceful timeout."""
    server = start_server(tmp_path / "server", {"QUART_APP_LINGER_SECONDS": "1"})
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                b"PUT /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + AUTH
                + b"Content-Length: 50000000\r\n\r\n"
            )
            sock.settimeout(5)
            head, _ = read_response(sock)
            assert status_of(head) == 404
            time.sleep(2)  # past the linger bound; still not closed by us
            assert server.process is not None
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(15)
            assert time.monotonic() - started < 1.0
        assert_clean_log(server)
    finally:
        server.stop()
