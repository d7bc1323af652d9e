"""HTTP/2 abuse against a real Hypercorn: rapid reset (CVE-2023-44487),
runaway streams, and HTTP/2 on the plain port.

The server under test listens on two ports, as a deployment with TLS does:
TLS, where HTTP/2 is negotiated by ALPN, and plain HTTP/1.1. Attackers speak
HTTP/2 over raw TLS sockets with the ``h2`` package and never wait for an
answer; a separate client probes ``/healthz`` on a new connection every
~100 ms meanwhile. See quart_app/edge/server_internals.py for the limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import httpx
import pytest
from h2.errors import ErrorCodes
from hpack import NeverIndexedHeaderTuple

from devtools.auth import TEST_ADMIN_KEY, bearer
from devtools.server import RunningServer, memory_kib, start_server, worker_pid
from devtools.stored import assert_server_holds, server_holds
from devtools.tls import self_signed_certificate

ATTACK_SECONDS = 5.0
PROBE_EVERY = 0.1
# Seconds a /healthz probe may take under attack. Generous (with the limits
# they take under ~0.5 s on a desktop-speed machine, and reached 1.02 s
# once in four CI runs on a slower one); stock Hypercorn took 1.75 s in
# this test and 79 s in the report that started this.
PROBE_LIMIT = 1.25
# After the attacker leaves, the worker's RSS is back within this of its
# figure before the attack, within RSS_SETTLE_SECONDS.
RSS_SLACK_KIB = 30 * 1024
RSS_SETTLE_SECONDS = 10.0
KIB = 1024

Headers = list[tuple[bytes, bytes]]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def h2_server(tmp_path: Path, tls_files: tuple[Path, Path]) -> Iterator[RunningServer]:
    running = start_server(tmp_path / "server", tls=tls_files)
    try:
        yield running
        assert "Traceback" not in running.log(), running.log()[-3000:]
    finally:
        running.stop()


def client_context(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def h2_socket(server: RunningServer, cert: Path) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.tls_port), timeout=10)
    sock = client_context(cert).wrap_socket(raw, server_hostname="127.0.0.1")
    assert sock.selected_alpn_protocol() == "h2"
    return sock


def request_headers(server: RunningServer, method: str, path: str) -> Headers:
    headers = [
        (b":method", method.encode()),
        (b":path", path.encode()),
        (b":scheme", b"https"),
        (b":authority", f"127.0.0.1:{server.tls_port}".encode()),
    ]
    if path != "/healthz":  # public; the attack on it stays the bytes it was
        headers.append((b"authorization", f"Bearer {TEST_ADMIN_KEY}".encode()))
    if method == "POST":
        headers.append((b"content-type", b"application/json"))
    return headers


@dataclass
class Attacker:
    """HEADERS then RST_STREAM(CANCEL), as fast as the socket takes them, on
    one connection at a time; a new connection whenever the server ends one,
    until ``deadline``. ``h2`` writes the preface, the settings and the first
    stream, which puts the request's fields into the HPACK table; every later
    HEADERS frame carries the same few bytes of indexes, so they are made
    here by hand, as a real attacker's tool would. What the server sends is
    read as it comes (so its writes never block on us) and only looked
    through for GOAWAY."""

    port: int
    cert: Path
    headers: Headers
    end_stream: bool
    deadline: float
    streams: int = 0
    connections: int = 0
    goaways: list[int] = field(default_factory=list)
    closed: int = 0

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            try:
                self._one_connection()
            except (OSError, ssl.SSLError):
                self.closed += 1

    def _one_connection(self) -> None:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        with client_context(self.cert).wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            assert sock.selected_alpn_protocol() == "h2"
            self.connections += 1
            conn = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=True, header_encoding=None)
            )
            conn.initiate_connection()
            conn.send_headers(1, self.headers, end_stream=self.end_stream)
            conn.reset_stream(1, ErrorCodes.CANCEL)
            queued = bytearray(conn.data_to_send())
            # h2 sent the key never indexed (RFC 7541 section 7.1.3), so it
            # is not in the table: say so again, or each copy of the block
            # would add it to the table and shift the indexes before it.
            block = conn.encoder.encode(
                [
                    NeverIndexedHeaderTuple(*h) if h[0] == b"authorization" else h
                    for h in self.headers
                ]
            )
            flags = 0x4 | (0x1 if self.end_stream else 0)  # END_HEADERS, END_STREAM
            headers_head = len(block).to_bytes(3, "big") + bytes([0x1, flags])
            reset_head = (4).to_bytes(3, "big") + bytes([0x3, 0])
            cancel = int(ErrorCodes.CANCEL).to_bytes(4, "big")
            stream_id, received, chunk = 3, bytearray(), b""
            sock.setblocking(False)
            while time.monotonic() < self.deadline:
                while len(queued) < 64 * KIB:
                    sid = stream_id.to_bytes(4, "big")
                    queued += headers_head + sid + block + reset_head + sid + cancel
                    stream_id += 2
                    self.streams += 1
                if not chunk:
                    chunk = bytes(queued[: 16 * KIB])
                    del queued[: 16 * KIB]
                readable, writable, _ = select.select([sock], [sock], [], 1.0)
                if (readable or sock.pending()) and self._receive(sock, received):
                    return
                if writable:
                    with contextlib.suppress(ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        chunk = chunk[sock.send(chunk) :]

    def _receive(self, sock: ssl.SSLSocket, received: bytearray) -> bool:
        """Take what the server sent; True when it ended the connection."""
        try:
            data = sock.recv(64 * KIB)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        if not data:
            self.closed += 1
            return True
        received += data
        while len(received) >= 9:
            length, kind = int.from_bytes(received[:3], "big"), received[3]
            if len(received) < 9 + length:
                break
            if kind == 0x7:  # GOAWAY: last stream id, then the error code
                self.goaways.append(int.from_bytes(received[13:17], "big"))
                return True
            del received[: 9 + length]
        return False


def attack(
    port: int, cert: Path, headers: Headers, end_stream: bool, connections: int, seconds: float
) -> list[dict[str, object]]:
    """Run ``connections`` attackers side by side for ``seconds``."""
    deadline = time.monotonic() + seconds
    attackers = [Attacker(port, cert, headers, end_stream, deadline) for _ in range(connections)]
    threads = [threading.Thread(target=a.run) for a in attackers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [
        {
            "streams": a.streams,
            "connections": a.connections,
            "goaways": a.goaways,
            "closed": a.closed,
        }
        for a in attackers
    ]


def _attack_in_child(queue: multiprocessing.Queue[object], *args: object) -> None:
    queue.put(attack(*args))  # type: ignore[arg-type]


@dataclass
class Probe:
    """GET /healthz on a new plain HTTP/1.1 connection every PROBE_EVERY."""

    url: str
    timeout: float = 30.0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def once(self) -> None:
        started = time.monotonic()
        try:
            status = httpx.get(f"{self.url}/healthz", timeout=self.timeout).status_code
        except httpx.HTTPError as error:
            self.failures.append(repr(error))
            self.latencies.append(time.monotonic() - started)
            return
        self.latencies.append(time.monotonic() - started)
        if status != 200:
            self.failures.append(f"status {status}")

    def until(self, done: threading.Event) -> None:
        while not done.is_set():
            started = time.monotonic()
            self.once()
            time.sleep(max(0.0, PROBE_EVERY - (time.monotonic() - started)))


def rss_kib(server: RunningServer) -> int:
    return memory_kib(worker_pid(server), "VmRSS")


@dataclass
class AttackResult:
    attackers: list[dict[str, Any]]
    probe: Probe
    rss_before: int
    rss_peak: int
    rss_after: list[tuple[float, int]]

    @property
    def settled_rss(self) -> int:
        return self.rss_after[-1][1]

    def summary(self) -> str:
        latencies = self.probe.latencies
        goaways = [code for a in self.attackers for code in a["goaways"]]
        return (
            f"streams sent {sum(a['streams'] for a in self.attackers)} "
            f"on {sum(a['connections'] for a in self.attackers)} connections, "
            f"GOAWAY {sorted(set(goaways))} x{len(goaways)}, "
            f"closed {sum(a['closed'] for a in self.attackers)}; "
            f"/healthz probes {len(latencies)}: max {max(latencies):.3f} s, "
            f"over {PROBE_LIMIT} s: {sum(x >= PROBE_LIMIT for x in latencies)}, "
            f"failures {len(self.probe.failures)}; "
            f"worker RSS before {self.rss_before / KIB:.1f} MiB, "
            f"peak {self.rss_peak / KIB:.1f} MiB, "
            f"{self.rss_after[-1][0]:.1f} s after {self.settled_rss / KIB:.1f} MiB"
        )


def rapid_reset(
    server: RunningServer,
    cert: Path,
    method: str,
    path: str,
    connections: int = 3,
    seconds: float = ATTACK_SECONDS,
    probe_timeout: float = 30.0,
    settle_seconds: float = RSS_SETTLE_SECONDS,
) -> AttackResult:
    """Attack for ``seconds`` from another process (so that the probe's
    timings are the server's, not this process's GIL) while probing
    /healthz; then watch the worker's RSS for up to ``settle_seconds``,
    stopping once it is back."""
    for _ in range(5):  # warm the paths the attack takes, so RSS compares like with like
        legit_h2_get(server, cert)
        httpx.get(f"{server.url}/healthz")
    rss_before = rss_kib(server)
    headers = request_headers(server, method, path)
    results: multiprocessing.Queue[object] = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(
        target=_attack_in_child,
        args=(results, server.tls_port, cert, headers, method == "GET", connections, seconds),
    )
    probe = Probe(server.url, timeout=probe_timeout)
    done = threading.Event()
    prober = threading.Thread(target=probe.until, args=(done,))
    child.start()
    prober.start()
    rss_peak = rss_before
    while child.is_alive() and results.empty():
        rss_peak = max(rss_peak, rss_kib(server))
        time.sleep(0.2)
    attackers: list[dict[str, Any]] = results.get(timeout=30)  # type: ignore[assignment]
    child.join()
    done.set()
    prober.join()
    rss_after: list[tuple[float, int]] = []
    ended = time.monotonic()
    while True:
        rss = rss_kib(server)
        rss_peak = max(rss_peak, rss)
        rss_after.append((time.monotonic() - ended, rss))
        if rss <= rss_before + RSS_SLACK_KIB or time.monotonic() - ended > settle_seconds:
            break
        time.sleep(0.5)
    return AttackResult(attackers, probe, rss_before, rss_peak, rss_after)


def legit_h2_get(server: RunningServer, cert: Path, path: str = "/healthz") -> httpx.Response:
    with httpx.Client(http2=True, verify=client_context(cert), timeout=10) as client:
        response = client.get(f"{server.tls_url}{path}")
    assert response.http_version == "HTTP/2"
    return response


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/healthz"), ("POST", "/users")],
    ids=["GET with END_STREAM", "POST without END_STREAM"],
)
def test_rapid_reset_keeps_healthz_answering_and_memory_returns(
    h2_server: RunningServer, tls_files: tuple[Path, Path], method: str, path: str
) -> None:
    result = rapid_reset(h2_server, tls_files[0], method, path, probe_timeout=5.0)
    print(f"\nrapid reset, {method} {path}: {result.summary()}")
    assert result.probe.failures == [], result.summary()
    assert max(result.probe.latencies) < PROBE_LIMIT, result.summary()
    assert len(result.probe.latencies) >= ATTACK_SECONDS / PROBE_LIMIT, result.summary()
    # The server told every attacker to go away, again and again.
    for attacker in result.attackers:
        assert attacker["connections"] > 1, result.summary()
        assert attacker["goaways"] or attacker["closed"], result.summary()
        assert set(attacker["goaways"]) <= {ErrorCodes.ENHANCE_YOUR_CALM}, result.summary()
    assert result.settled_rss <= result.rss_before + RSS_SLACK_KIB, result.summary()
    # Still serving HTTP/2 and HTTP/1.1 afterwards.
    assert legit_h2_get(h2_server, tls_files[0]).status_code == 200
    assert httpx.get(f"{h2_server.url}/healthz").status_code == 200


class H2Client:
    """A blocking HTTP/2 client over TLS with frame-level control."""

    def __init__(self, server: RunningServer, cert: Path) -> None:
        self.server = server
        self.sock = h2_socket(server, cert)
        self.sock.settimeout(0.05)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.flush()
        self.closed = False  # the server ended the connection

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def request(self, method: str, path: str, end_stream: bool = True) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = request_headers(self.server, method, path)
        self.conn.send_headers(stream_id, headers, end_stream=end_stream)
        self.flush()
        return stream_id

    def reset(self, *stream_ids: int) -> None:
        for stream_id in stream_ids:
            self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
        self.flush()

    def send_body(self, stream_id: int, size: int) -> None:
        """``size`` bytes of body, as fast as flow control lets them go."""
        while size > 0:
            room = min(self.conn.local_flow_control_window(stream_id), 16 * KIB, size)
            if room <= 0:
                self.events(0.05)  # the server's WINDOW_UPDATEs
                continue
            self.conn.send_data(stream_id, b"x" * room)
            self.flush()
            size -= room

    def events(self, seconds: float) -> list[h2.events.Event]:
        """What the server sends within ``seconds``."""
        events: list[h2.events.Event] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(64 * KIB)
            except TimeoutError:
                continue
            if not data:
                self.closed = True
                break
            events += self.conn.receive_data(data)
            self.flush()
        return events

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()


def refused(events: list[h2.events.Event]) -> list[int]:
    return [
        e.stream_id
        for e in events
        if isinstance(e, h2.events.StreamReset) and e.error_code == ErrorCodes.REFUSED_STREAM
    ]


def answered(events: list[h2.events.Event]) -> dict[int, bytes]:
    """Stream id -> :status of each response."""
    return {
        e.stream_id: dict(e.headers)[b":status"]
        for e in events
        if isinstance(e, h2.events.ResponseReceived)
    }


def test_http2_clients_are_served(h2_server: RunningServer, tls_files: tuple[Path, Path]) -> None:
    """httpx over HTTP/2: many requests at once on one connection."""
    content = os.urandom(300 * KIB)

    async def use_it() -> None:
        context = client_context(tls_files[0])
        async with httpx.AsyncClient(
            http2=True, verify=context, base_url=h2_server.tls_url, headers=bearer(), timeout=20
        ) as client:
            healthz = [client.get("/healthz") for _ in range(30)]
            users = [
                client.post("/users", json={"name": f"h{i}", "email": f"h{i}@example.com"})
                for i in range(20)
            ]
            put = client.put("/files/over-h2", content=content)
            responses = await asyncio.gather(*healthz, *users, put)
            assert {r.http_version for r in responses} == {"HTTP/2"}
            assert [r.status_code for r in responses] == [200] * 30 + [201] * 21
            download = await client.get("/files/over-h2/content")
            assert download.status_code == 200 and download.content == content

    asyncio.run(use_it())


def test_a_reset_stream_stops_its_handler(
    h2_server: RunningServer, tls_files: tuple[Path, Path]
) -> None:
    """An upload reset halfway: its handler ends at once, and nothing of it
    is left (the body idle timeout is 30 s; it is not what ends it)."""
    before = server_holds(h2_server)
    with H2Client(h2_server, tls_files[0]) as client:
        stream_id = client.conn.get_next_available_stream_id()
        headers = request_headers(h2_server, "PUT", "/files/halfway")
        client.conn.send_headers(stream_id, [*headers, (b"content-length", b"3000000")])
        # Past the first 1 MiB write batch, so that a temp file exists.
        client.send_body(stream_id, 1300 * KIB)
        tmp = h2_server.storage_dir / "tmp"
        deadline = time.monotonic() + 10
        while not any(tmp.iterdir()):  # the handler is writing the body
            assert time.monotonic() < deadline
            time.sleep(0.02)
        client.reset(stream_id)
        reset_at = time.monotonic()
        h2_server.wait_for_access(lambda line: line["path"] == "/files/halfway", timeout=5)
        assert time.monotonic() - reset_at < PROBE_LIMIT
        assert_server_holds(h2_server, before, timeout=PROBE_LIMIT)


def test_http2_requests_per_worker_are_bounded(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    """Past QUART_APP_H2_MAX_STREAMS_PER_WORKER running, over all
    connections, a new stream is refused; a reset gives its place back."""
    server = start_server(
        tmp_path / "server", {"QUART_APP_H2_MAX_STREAMS_PER_WORKER": "4"}, tls=tls_files
    )
    try:
        with H2Client(server, tls_files[0]) as one, H2Client(server, tls_files[0]) as two:
            # POSTs whose bodies never come: their handlers wait.
            waiting = [one.request("POST", "/users", end_stream=False) for _ in range(3)]
            assert refused(one.events(0.5)) == []
            fourth = two.request("POST", "/users", end_stream=False)
            over = [two.request("GET", "/healthz") for _ in range(2)]
            assert refused(two.events(0.5)) == over
            one.reset(*waiting)
            server.wait_for_access(lambda line: line["path"] == "/users", count=3, timeout=5)
            again = [two.request("GET", "/healthz") for _ in range(3)]
            events = two.events(1.0)
            assert refused(events) == []
            assert answered(events) == {stream_id: b"200" for stream_id in again}
            two.reset(fourth)
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def test_http2_on_the_plain_port_is_refused(h2_server: RunningServer) -> None:
    """Prior knowledge: GOAWAY(HTTP_1_1_REQUIRED), never the app."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    headers = [(b":method", b"GET"), (b":path", b"/healthz"), (b":scheme", b"http")]
    conn.send_headers(1, [*headers, (b":authority", b"127.0.0.1")], end_stream=True)
    events: list[h2.events.Event] = []
    with socket.create_connection(("127.0.0.1", h2_server.port), timeout=5) as sock:
        sock.sendall(conn.data_to_send())
        while data := sock.recv(64 * KIB):
            events += conn.receive_data(data)
    goaways = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert [e.error_code for e in goaways] == [ErrorCodes.HTTP_1_1_REQUIRED]
    assert answered(events) == {}


def test_upgrade_to_h2c_is_answered_over_http_1_1(h2_server: RunningServer) -> None:
    request = (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Connection: Upgrade, HTTP2-Settings, close\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", h2_server.port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while data := sock.recv(64 * KIB):
            answer += data
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b'{"status":"ok"}' in answer


def test_a_response_the_client_grants_no_window_is_cancelled(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    """Flow control lets a client stall a response without a byte reaching
    the socket, while its stream holds a worker slot and PINGs keep the
    connection busy: past the rate floor's window the stream is cancelled
    and its slot comes back."""
    server = start_server(
        tmp_path / "server",
        {"QUART_APP_H2_MAX_STREAMS_PER_WORKER": "4", "QUART_APP_TRANSFER_RATE_WINDOW": "1"},
        tls=tls_files,
    )
    try:
        with H2Client(server, tls_files[0]) as stalling, H2Client(server, tls_files[0]) as other:
            stalling.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
            stalling.flush()
            stalled = [stalling.request("GET", "/healthz") for _ in range(4)]
            stalling.events(0.3)
            assert refused(other.events(0.1)) == []
            blocked = other.request("GET", "/healthz")
            assert refused(other.events(0.5)) == [blocked]  # every slot is held
            cancelled: list[int] = []
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline and len(cancelled) < len(stalled):
                stalling.conn.ping(b"stalling")
                stalling.flush()
                cancelled += [
                    e.stream_id
                    for e in stalling.events(0.5)
                    if isinstance(e, h2.events.StreamReset) and e.error_code == ErrorCodes.CANCEL
                ]
            assert sorted(cancelled) == stalled
            again = other.request("GET", "/healthz")
            assert answered(other.events(1.0)) == {again: b"200"}
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def test_an_early_answer_asks_the_client_to_stop_sending(
    h2_server: RunningServer, tls_files: tuple[Path, Path]
) -> None:
    """RFC 9113 section 8.1: after a complete response to a request whose
    body is still coming, RST_STREAM(NO_ERROR), so the client stops."""
    with H2Client(h2_server, tls_files[0]) as client:
        stream_id = client.request("PUT", "/nope", end_stream=False)
        client.send_body(stream_id, 48 * KIB)
        events = client.events(1.0)
        assert answered(events) == {stream_id: b"404"}
        resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
        assert [(e.stream_id, e.error_code) for e in resets] == [(stream_id, ErrorCodes.NO_ERROR)]


# Rounds of streams, and streams of each kind per round, opened at once on
# one connection by test_early_answers_leave_the_connection_and_others_up.
EARLY_ANSWER_ROUNDS = 10
EARLY_ANSWER_STREAMS = 4
# Bodies go a few KiB per stream per turn, in small DATA frames: many
# frames parsed from one read, each an await in the server (its app's
# receive queue holds max_app_queue_size messages), for the app of a stream
# to answer in between.
BODY_STEP = 8 * KIB
BODY_FRAME = 512


def test_early_answers_leave_the_connection_and_others_up(
    h2_server: RunningServer, tls_files: tuple[Path, Path]
) -> None:
    """PUTs without a key, each announcing 4 MiB and sending it slowly, are
    answered 401 before their bodies arrive, while keyed uploads and GETs
    run beside them on the same connection. DATA parsed from the same read
    as the 401's stream then reaches a stream that has gone, which
    Hypercorn 0.18 fails on (KeyError, pgjones/hypercorn#329): the
    connection's task ends, and the connection is dropped or (here) stuck,
    with every stream on it. Every stream not refused gets its answer, and
    the connection stays up."""
    content = os.urandom(64 * KIB)
    unread = b"y" * 4 * 1024 * KIB
    expected: dict[int, bytes] = {}
    events: list[h2.events.Event] = []
    with H2Client(h2_server, tls_files[0]) as client:
        for round_ in range(EARLY_ANSWER_ROUNDS):
            bodies: dict[int, tuple[bytes, int]] = {}  # stream -> (body, bytes sent)
            for i in range(EARLY_ANSWER_STREAMS):
                for name, body, status in (
                    (f"nokey-{round_}-{i}", unread, b"401"),
                    (f"h2-{round_}-{i}", content, b"201"),
                ):
                    headers = request_headers(h2_server, "PUT", f"/files/{name}")
                    if status == b"401":
                        headers = [h for h in headers if h[0] != b"authorization"]
                    headers.append((b"content-length", str(len(body)).encode()))
                    stream_id = client.conn.get_next_available_stream_id()
                    client.conn.send_headers(stream_id, headers)
                    bodies[stream_id], expected[stream_id] = (body, 0), status
                stream_id = client.conn.get_next_available_stream_id()
                client.conn.send_headers(
                    stream_id, request_headers(h2_server, "GET", "/healthz"), end_stream=True
                )
                expected[stream_id] = b"200"
            deadline = time.monotonic() + 20
            while bodies:  # the first turn goes in the same write as the HEADERS
                # Unfixed, the connection's task stopped on the KeyError
                # and the bodies stalled on flow control.
                assert time.monotonic() < deadline, "bodies still unsent: connection stuck"
                for stream_id, (body, sent) in list(bodies.items()):
                    sent = send_step(client.conn, stream_id, body, sent)
                    if sent < len(body):
                        bodies[stream_id] = (body, sent)
                    else:
                        del bodies[stream_id]
                client.flush()
                events += client.events(0.01)
                assert not client.closed, f"connection dropped in round {round_}"
            # Every answer in before the next round: the connection idle.
            while len(answered(events)) + len(refused(events)) < len(expected):
                assert time.monotonic() < deadline, "answers still missing"
                events += client.events(0.05)
                assert not client.closed, f"connection dropped in round {round_}"
        assert not [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        turned_away = set(refused(events))
        assert len(turned_away) < len(expected) // 2
        assert answered(events) == {
            stream_id: status
            for stream_id, status in expected.items()
            if stream_id not in turned_away
        }
        again = client.request("GET", "/healthz")
        assert answered(client.events(1.0)) == {again: b"200"}
    download = httpx.get(f"{h2_server.url}/files/h2-0-0/content", headers=bearer())
    assert download.status_code == 200 and download.content == content
    assert httpx.get(f"{h2_server.url}/files/nokey-0-0", headers=bearer()).status_code == 404


def send_step(conn: h2.connection.H2Connection, stream_id: int, body: bytes, sent: int) -> int:
    """The next BODY_STEP bytes of ``body`` at most (fewer if flow control
    says so) in BODY_FRAME frames, the last with END_STREAM; the bytes sent
    so far, all of them once the server has ended the stream."""
    step_end = min(sent + BODY_STEP, len(body))
    try:
        while sent < step_end:
            room = min(conn.local_flow_control_window(stream_id), BODY_FRAME, step_end - sent)
            if room <= 0:
                break
            end = sent + room
            conn.send_data(stream_id, body[sent:end], end_stream=end == len(body))
            sent = end
    except h2.exceptions.StreamClosedError:  # answered and reset: stop sending
        return len(body)
    return sent
