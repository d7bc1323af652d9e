"""quart_app/edge/server_internals.py (HTTP/2) against Hypercorn's own protocol classes, in
process: an h2 client on one side, no socket.

These are also the canaries for the Hypercorn internals the module relies
on: if an upgrade renames or reshapes them, a test here fails loudly
(rather than the limits silently stopping to apply).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.settings
import hypercorn.protocol
import pytest
from h2.errors import ErrorCodes
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H2CProtocolRequiredError, H2ProtocolAssumedError, H11Protocol
from hypercorn.typing import AppWrapper, ConnectionState

from devtools.socketless import http1_protocol
from quart_app.config import Settings
from quart_app.edge import server_internals as h2_limits
from quart_app.edge.server_internals import HTTP1Protocol, LimitedH2Protocol, StreamApp

Headers = list[tuple[bytes, bytes]]
GET: Headers = [(b":method", b"GET"), (b":path", b"/healthz"), (b":scheme", b"https")]
GET += [(b":authority", b"127.0.0.1")]
POST: Headers = [(b":method", b"POST"), (b":path", b"/users"), (b":scheme", b"https")]
POST += [(b":authority", b"127.0.0.1")]


class HeldApp:
    """An app that records each call and keeps running, whatever the
    client does, until ``release`` is set: the worst case for the limits,
    a handler that ignores ``http.disconnect``."""

    def __init__(self) -> None:
        self.calls = 0
        self.running = 0
        self.release = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any, *_: Any) -> None:
        self.calls += 1
        self.running += 1
        try:
            await self.release.wait()
        finally:
            self.running -= 1


class Connection:
    """A LimitedH2Protocol over no socket."""

    def __init__(
        self,
        task_group: TaskGroup,
        app: Any,
        ssl: bool = True,
        config: Config | None = None,
        yielding: bool = False,
    ) -> None:
        self.sent: list[Event] = []
        # Let every other task run when a stream starts, as the real
        # connection's task can be held up there (by the socket, the app's
        # full receive queue) in the middle of a read's events.
        self.yielding = yielding
        self.protocol = LimitedH2Protocol(
            app,
            config or Config(),
            WorkerContext(None),
            task_group,
            ConnectionState({}),
            ssl,
            ("127.0.0.1", 50000),
            ("127.0.0.1", 443),
            self._send,
        )
        task_group.protocols.append(self.protocol)  # type: ignore[attr-defined]
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.client.initiate_connection()

    async def _send(self, event: Event) -> None:
        self.sent.append(event)
        if self.yielding and isinstance(event, Updated):
            await asyncio.sleep(0.01)

    async def start(self) -> None:
        await self.protocol.initiate()
        await self.flush()

    async def flush(self) -> None:
        """Hand the server what the client has queued."""
        data = self.client.data_to_send()
        if data:
            await self.protocol.handle(RawData(data=data))

    def open(self, count: int, headers: Headers = GET, end_stream: bool = True) -> list[int]:
        ids = []
        for _ in range(count):
            stream_id = self.client.get_next_available_stream_id()
            self.client.send_headers(stream_id, headers, end_stream=end_stream)
            ids.append(stream_id)
        return ids

    def reset(self, ids: list[int]) -> None:
        for stream_id in ids:
            self.client.reset_stream(stream_id, ErrorCodes.CANCEL)

    def rapid_reset(self, count: int, headers: Headers = GET) -> list[int]:
        """HEADERS then RST_STREAM, ``count`` times: never more than one open."""
        ids = []
        for _ in range(count):
            ids += self.open(1, headers, end_stream=headers is GET)
            self.reset(ids[-1:])
        return ids

    def received(self) -> list[h2.events.Event]:
        """What the server sent since the last call, as the client's events."""
        events: list[h2.events.Event] = []
        for event in self.sent:
            if isinstance(event, RawData):
                events += self.client.receive_data(event.data)
        self.sent = [e for e in self.sent if not isinstance(e, RawData)]
        return events

    def refused(self, events: list[h2.events.Event]) -> list[int]:
        return [
            e.stream_id
            for e in events
            if isinstance(e, h2.events.StreamReset) and e.error_code == ErrorCodes.REFUSED_STREAM
        ]


async def settle() -> None:
    """Let every task that can run, run."""
    for _ in range(20):
        await asyncio.sleep(0)


async def eventually(check: Callable[[], bool]) -> bool:
    """Whether ``check`` came true within 5 seconds: for a test whose
    connection sleeps (``yielding``), where a count of yields is not enough
    on a loaded machine."""
    try:
        async with asyncio.timeout(5):
            # Polled: the state checked is the h2 client's, which sets no event.
            while not check():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        return False
    return True


@pytest.fixture
def worker_limit() -> Iterator[Callable[[int], None]]:
    before = h2_limits.WORKER_STREAMS.limit
    h2_limits.install_http2_limits(Settings())

    def set_limit(limit: int) -> None:
        h2_limits.install_http2_limits(Settings(H2_MAX_STREAMS_PER_WORKER=limit))

    yield set_limit
    h2_limits.WORKER_STREAMS.limit = before


class Tasks(TaskGroup):
    """Hypercorn's asyncio TaskGroup (its spawn_app and the _handle that
    runs an app), over tasks a test can end whatever state it leaves."""

    def __init__(self) -> None:
        super().__init__(asyncio.get_running_loop())
        self.tasks: set[asyncio.Task[Any]] = set()
        self.protocols: list[Any] = []

    def spawn(self, func: Callable[..., Any], *args: Any) -> None:
        task = asyncio.ensure_future(func(*args))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def end(self) -> None:
        # Closed first: an app cancelled on a stream still open answers 500
        # and waits for the sending task to drain it.
        for protocol in self.protocols:
            await protocol.handle(Closed())
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def task_group(worker_limit: Callable[[int], None]) -> AsyncIterator[TaskGroup]:
    tasks = Tasks()
    yield tasks
    await tasks.end()
    gc.collect()  # a StreamApp whose task never ran gives its place back when freed
    assert h2_limits.WORKER_STREAMS.running == 0


async def test_install_makes_hypercorn_build_these_protocols(
    task_group: TaskGroup, worker_limit: Callable[[int], None]
) -> None:
    """Hypercorn picks its protocol classes by module name when a
    connection starts; after install() those names are ours."""
    assert hypercorn.protocol.H2Protocol is LimitedH2Protocol  # type: ignore[attr-defined]
    assert hypercorn.protocol.H11Protocol is HTTP1Protocol  # type: ignore[attr-defined]

    async def send(_: Event) -> None:
        pass

    def wrapper(alpn: str) -> ProtocolWrapper:
        return ProtocolWrapper(
            cast(AppWrapper, HeldApp()),  # an ASGI app as Hypercorn calls one
            Config(),
            WorkerContext(None),
            task_group,
            ConnectionState({}),
            True,
            None,
            None,
            send,
            alpn,
        )

    assert type(wrapper("h2").protocol) is LimitedH2Protocol
    assert type(wrapper("http/1.1").protocol) is HTTP1Protocol


def test_the_hypercorn_internals_relied_on_are_there() -> None:
    for name in ("initiate", "handle", "_handle_events", "_create_stream", "_close_stream"):
        assert callable(getattr(H2Protocol, name)), name
    for name in ("_flush", "send_task"):
        assert callable(getattr(H2Protocol, name)), name
    assert callable(H11Protocol._check_protocol)
    assert callable(WorkerContext.sleep)
    config = Config()
    assert (config.h2_max_concurrent_streams, config.keep_alive_max_requests) == (100, 1000)
    # _create_stream makes the stream from self.app before its first await,
    # which is what lets LimitedH2Protocol hand each stream its own app.
    source = inspect.getsource(H2Protocol._create_stream)
    assert source.index("self.app,") < source.index("await ")
    # LimitedH2Protocol._handle_data checks a DATA event's stream is there,
    # then hands the event on alone: Hypercorn must look the stream up
    # before its first await. (Once Hypercorn skips a missing stream itself,
    # pgjones/hypercorn#329, _handle_data can go.)
    source = inspect.getsource(H2Protocol._handle_events)
    data = source[source.index("h2.events.DataReceived") :]
    assert data.index("await ") == data.index("await self.streams[event.stream_id].handle(")


async def test_each_stream_gets_its_own_app_and_gives_its_place_back(
    task_group: TaskGroup,
) -> None:
    app = HeldApp()
    connection = Connection(task_group, app)
    await connection.start()
    ids = connection.open(3, POST, end_stream=False)
    await connection.flush()
    await settle()
    assert app.calls == 3
    assert all(isinstance(connection.protocol.streams[i].app, StreamApp) for i in ids)
    assert id(connection.protocol.app) == id(app)  # the swap was undone
    assert h2_limits.WORKER_STREAMS.running == 3
    app.release.set()
    await settle()
    assert h2_limits.WORKER_STREAMS.running == 0
    assert connection.protocol.stream_apps == {}


async def test_a_stream_reset_before_its_app_ran_never_reaches_it(task_group: TaskGroup) -> None:
    app = HeldApp()
    connection = Connection(task_group, app)
    await connection.start()
    connection.rapid_reset(50)
    await connection.flush()
    await settle()
    assert app.calls == 0
    assert h2_limits.WORKER_STREAMS.running == 0
    # Hypercorn keeps a stream's send buffer until its app ends the
    # response; these never will, and are let go all the same.
    assert connection.protocol.stream_buffers == {}


async def test_many_resets_within_the_budget_leave_nothing_behind(
    task_group: TaskGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stock Hypercorn keeps every stream reset before its response in its
    priority tree, and the 1001st raised out of the connection."""
    monkeypatch.setattr(h2_limits, "RESET_BUDGET", 100_000)
    config = Config()
    config.keep_alive_max_requests = 100_000
    app = HeldApp()
    connection = Connection(task_group, app, config=config)
    await connection.start()
    for _ in range(30):
        connection.rapid_reset(50, POST)
        await connection.flush()
        await settle()
    assert not connection.protocol.closed
    assert connection.protocol.stream_buffers == {}
    # and the connection still serves
    connection.open(1)
    await connection.flush()
    await settle()
    assert app.calls == 1
    app.release.set()


async def test_running_apps_bound_the_connection(task_group: TaskGroup) -> None:
    """h2 forgets a stream the moment it is reset; the app may not. Past
    h2_max_concurrent_streams apps still running, new streams are refused."""
    app = HeldApp()
    connection = Connection(task_group, app)
    await connection.start()
    first = connection.open(100, POST, end_stream=False)
    await connection.flush()
    await settle()
    assert app.running == 100
    connection.reset(first)  # h2 now counts none open; the apps run on
    await connection.flush()
    more = connection.open(10)
    await connection.flush()
    await settle()
    assert connection.refused(connection.received()) == more
    assert app.calls == 100
    app.release.set()
    await settle()
    connection.open(1)
    await connection.flush()
    await settle()
    assert app.calls == 101


async def test_running_apps_bound_the_worker(
    task_group: TaskGroup, worker_limit: Callable[[int], None]
) -> None:
    worker_limit(3)
    app = HeldApp()
    one, two = Connection(task_group, app), Connection(task_group, app)
    await one.start()
    await two.start()
    one.open(2, POST, end_stream=False)
    await one.flush()
    admitted, refused = two.open(2, POST, end_stream=False)
    await two.flush()
    await settle()
    assert app.running == 3
    assert two.refused(two.received()) == [refused]
    assert admitted in two.protocol.streams
    app.release.set()
    await settle()
    assert h2_limits.WORKER_STREAMS.running == 0


async def test_past_the_reset_budget_the_connection_is_told_to_calm_down(
    task_group: TaskGroup,
) -> None:
    app = HeldApp()
    connection = Connection(task_group, app)
    await connection.start()
    events: list[h2.events.Event] = []
    sent = 0
    while not connection.protocol.closed:
        assert sent <= h2_limits.RESET_BUDGET, "no GOAWAY once past the budget"
        ids = connection.rapid_reset(50, POST)
        sent += len(ids)
        await connection.flush()
        events += connection.received()
        await settle()
    goaways = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert [e.error_code for e in goaways] == [ErrorCodes.ENHANCE_YOUR_CALM]
    last = goaways[0].last_stream_id
    assert last is not None and last <= ids[-1]
    assert any(isinstance(e, Closed) for e in connection.sent)
    assert app.calls == 0
    # Nothing more is read from it.
    connection.client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    connection.client.initiate_connection()
    connection.open(1)
    await connection.flush()
    await settle()
    assert app.calls == 0
    assert h2_limits.WORKER_STREAMS.running == 0


async def test_refused_streams_bodies_go_back_to_the_flow_control_window(
    task_group: TaskGroup, worker_limit: Callable[[int], None]
) -> None:
    """h2 parses a body sent with its HEADERS before the stream is refused;
    the bytes still count against the connection's window. Twice the
    window's worth goes through only if the server gives them back."""
    worker_limit(1)
    app = HeldApp()
    connection = Connection(task_group, app)
    await connection.start()
    connection.open(1, POST, end_stream=False)  # takes the worker's one place
    refused: list[int] = []
    for _ in range(8):
        assert connection.client.outbound_flow_control_window >= 16000
        (stream_id,) = connection.open(1, POST, end_stream=False)
        connection.client.send_data(stream_id, b"x" * 16000)
        await connection.flush()
        await settle()
        refused += connection.refused(connection.received())
    assert len(refused) == 8
    assert not connection.protocol.closed
    assert app.calls == 1


async def test_h2c_prior_knowledge_is_told_to_use_http_1_1(task_group: TaskGroup) -> None:
    app = HeldApp()
    connection = Connection(task_group, app, ssl=False)
    await connection.start()
    connection.open(1)
    await connection.flush()
    events = connection.received()
    goaways = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert [e.error_code for e in goaways] == [ErrorCodes.HTTP_1_1_REQUIRED]
    assert any(isinstance(e, Closed) for e in connection.sent)
    await settle()
    assert app.calls == 0


UPGRADE = (
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def http1(protocol_class: type[H11Protocol], task_group: TaskGroup, app: Any) -> Any:
    sent: list[Event] = []

    async def send(event: Event) -> None:
        sent.append(event)

    protocol = http1_protocol(protocol_class, app, task_group, send)
    task_group.protocols.append(protocol)  # type: ignore[attr-defined]
    return protocol, sent


async def test_upgrade_h2c_is_answered_over_http_1_1(task_group: TaskGroup) -> None:
    versions: list[str] = []

    async def answer(scope: Any, receive: Any, send: Any, *_: Any) -> None:
        versions.append(scope["http_version"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    stock, _ = http1(H11Protocol, task_group, answer)
    with pytest.raises(H2CProtocolRequiredError):  # what Hypercorn does by itself
        await stock.handle(RawData(data=UPGRADE))
    protocol, sent = http1(HTTP1Protocol, task_group, answer)
    await protocol.handle(RawData(data=UPGRADE))
    assert versions == ["1.1"]
    answered = b"".join(e.data for e in sent if isinstance(e, RawData))
    assert answered.startswith(b"HTTP/1.1 200 ")
    assert answered.endswith(b"2\r\nok\r\n0\r\n\r\n")


async def test_the_prior_knowledge_preface_is_handed_to_http2(task_group: TaskGroup) -> None:
    """...where LimitedH2Protocol refuses it (the test above)."""
    protocol, _ = http1(HTTP1Protocol, task_group, HeldApp())
    with pytest.raises(H2ProtocolAssumedError):
        await protocol.handle(RawData(data=PREFACE))


class BodyRecorder:
    """An app that reads its whole body, keeping each message, then answers."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any, *_: Any) -> None:
        while True:
            message = await receive()
            self.messages.append(message)
            if not message.get("more_body", False):
                break
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    @property
    def body(self) -> bytes:
        return b"".join(message.get("body", b"") for message in self.messages)


BODY = bytes(range(256)) * 40  # 10,240 bytes
PUT = b"PUT /files/a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10240\r\n\r\n"
CHUNKED = b"PUT /files/a HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
NEXT = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def serve_reads(
    protocol_class: type[H11Protocol], task_group: TaskGroup, reads: list[bytes]
) -> tuple[BodyRecorder, bytes]:
    """What the app received and what the client was sent, for these
    socket reads on one connection."""
    app = BodyRecorder()
    protocol, sent = http1(protocol_class, task_group, app)
    for data in reads:
        # b"": the client closed the connection (what TCPServer hands on).
        await protocol.handle(RawData(data=data) if data else Closed())
        await settle()
    answers = b"".join(e.data for e in sent if isinstance(e, RawData))
    return app, re.sub(rb"date: [^\r]*\r\n", b"", answers)  # the second may turn between runs


@pytest.mark.parametrize(
    "reads",
    [
        [PUT, BODY[:4096], BODY[4096:8192], BODY[8192:]],
        [PUT + BODY[:100], BODY[100:5000], BODY[5000:10000], BODY[10000:] + NEXT],
        [PUT, BODY[:10239], BODY[10239:]],
        [PUT, BODY],
        [PUT[:20], PUT[20:] + BODY[:1], BODY[1:]],
        [CHUNKED, b"1000\r\n" + BODY[:4096] + b"\r\n", b"0\r\n\r\n"],
        [PUT, BODY[:4096], BODY[4096:8192], b""],
        [PUT.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"), BODY[:9], BODY[9:]],
    ],
    ids=[
        "body-alone",
        "head-and-next-request",
        "last-byte",
        "whole",
        "split-head",
        "chunked",
        "cut-mid-body",
        "100",
    ],
)
async def test_a_body_arrives_and_is_answered_as_stock_hypercorn_does_it(
    task_group: TaskGroup, reads: list[bytes]
) -> None:
    """HTTP1Protocol hands a read that is all body, and not the body's end,
    to the stream past h11. The app must see the same bytes and the client
    the same answers as with Hypercorn's own protocol, a pipelined request
    after the body included; only where the body came whole in a read of its
    own is that read handed on as it came (no copy)."""
    ours, our_answers = await serve_reads(HTTP1Protocol, task_group, reads)
    stock, stock_answers = await serve_reads(H11Protocol, task_group, reads)
    assert ours.body == stock.body
    assert [m.get("more_body", False) for m in ours.messages][-1] is False
    assert our_answers == stock_answers
    if reads[-1] == b"":
        assert ours.messages[-1]["type"] == "http.disconnect"
    requests = 2 if reads[-1].endswith(NEXT) else 1
    assert our_answers.count(b"HTTP/1.1 201 ") == requests
    assert our_answers.count(b"HTTP/1.1 100 ") == (1 if b"100-continue" in reads[0] else 0)


async def test_a_read_that_is_all_body_reaches_the_app_as_it_was_read(
    task_group: TaskGroup,
) -> None:
    """The copies saved: the middle reads are the very objects the socket
    gave; the last goes through h11, which ends the body."""
    reads = [PUT, BODY[:4096], BODY[4096:8192], BODY[8192:]]
    app, answers = await serve_reads(HTTP1Protocol, task_group, reads)
    bodies = [m["body"] for m in app.messages if m.get("body")]
    assert bodies[0] is reads[1]
    assert bodies[1] is reads[2]
    assert bodies[2] == reads[3]
    assert answers.startswith(b"HTTP/1.1 201 ")


async def test_a_closed_connection_lets_its_apps_finish_and_stays_closed(
    task_group: TaskGroup,
) -> None:
    """An app mid-response when its connection ends waits on the stream's
    send buffer for a sending task that has stopped: it must be let go,
    and its end must not restart the closed connection's idle timer."""
    finished = asyncio.Event()

    async def large_answer(scope: Any, receive: Any, send: Any, *_: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        # More than the client's flow-control window: it never reads.
        await send({"type": "http.response.body", "body": b"x" * 200_000})
        finished.set()

    connection = Connection(task_group, large_answer)
    await connection.start()
    connection.open(1)
    await connection.flush()
    await settle()
    assert not finished.is_set()  # blocked on flow control
    closed_at = len(connection.sent)
    await connection.protocol.handle(Closed())  # the client went away
    await asyncio.wait_for(finished.wait(), 1)
    await settle()
    assert h2_limits.WORKER_STREAMS.running == 0
    assert not [e for e in connection.sent[closed_at:] if isinstance(e, Updated)]


async def test_body_still_coming_after_an_early_answer_leaves_the_connection_up(
    task_group: TaskGroup,
) -> None:
    """An app that answers before the body arrived (a 401, a 413) can end
    its stream while h2 events parsed from the same read are still being
    handled: DATA for it comes after the stream has gone. Hypercorn 0.18
    looks the stream up and fails on it (KeyError, pgjones/hypercorn#329),
    which tore down the connection and every other stream on it."""

    async def early_answer(scope: Any, receive: Any, send: Any, *_: Any) -> None:
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})

    connection = Connection(task_group, early_answer, yielding=True)
    await connection.start()
    put: Headers = [(b":method", b"PUT"), *POST[1:]]
    # Twice the connection's window in all: it goes through only if the
    # server gives the bytes nobody read back.
    events: list[h2.events.Event] = []

    def window_given_back() -> bool:
        events.extend(connection.received())
        return connection.client.outbound_flow_control_window >= 16000

    def answered() -> bool:
        events.extend(connection.received())
        return any(isinstance(e, h2.events.ResponseReceived) for e in events)

    for _ in range(10):
        assert await eventually(window_given_back)
        (stream_id,) = connection.open(1, put, end_stream=False)
        for _ in range(4):  # one read: HEADERS, then DATA the app never reads
            connection.client.send_data(stream_id, b"x" * 4000)
        await connection.flush()
        assert await eventually(answered)
        await settle()
        events.extend(connection.received())
        assert [e.stream_id for e in events if isinstance(e, h2.events.ResponseReceived)] == [
            stream_id
        ]
        assert not connection.protocol.closed
        events.clear()
    assert h2_limits.WORKER_STREAMS.running == 0
