"""Every place quart_app relies on private internals of Quart, Hypercorn or
h11, in one module, so that an upgrade has one file to re-check (and
tests/unit/test_server_internals.py, its canaries, fail when one moves).

Werkzeug 3.1:

- :class:`LazyBuilderRule` compiles a URL rule's builders (what ``url_for``
  calls) on their first use, not when the rule is added.

Quart 0.22:

- :class:`BoundedRequest` makes every request's body a bodies.BoundedBody
  (Request.body_class).
- :class:`BackPressureHTTPConnection` restates ASGIHTTPConnection.__call__
  and handle_messages: the receive loop stops taking messages while the body
  buffer is full (back-pressure); a response that starts before the body
  has all arrived abandons the body and, on HTTP/1, says Connection: close;
  a client gone with bytes still buffered does not cancel the handler until
  it has read them (a cut tus PATCH keeps them by design, not by the order
  tasks are scheduled); a handler cancelled before it answered (the graceful
  timeout ran out) answers 503 rather than Hypercorn's 500.

Hypercorn 0.18 (asyncio worker) runs one ``hypercorn.asyncio.tcp_server.TCPServer`` per
connection. As shipped it:

- closes a connection when nothing was *read* for ``read_timeout`` seconds,
  even while it is writing a long response to a client that reads steadily;
- waits forever in ``drain()`` for a client that stopped reading, holding
  the unsent part of the response, so such clients pile up memory;
- closes at once after an early answer (a 412 before a large body), so the
  unread body in the receive queue turns the close into a reset, and the
  client may never see the answer;
- accepts any number of connections per worker;
- reads the socket 64 KiB at a time (a module constant).

What each did when reproduced: README, "Why the code is shaped this way".

:class:`GuardedTCPServer` replaces it (``install``) and keeps the rest:

- a connection is idle only when nothing moved in either direction for
  ``IDLE_TIMEOUT`` seconds; Hypercorn's ``read_timeout`` is not used;
- a response write that moves fewer than ``MIN_TRANSFER_RATE`` bytes a
  second over ``TRANSFER_RATE_WINDOW`` seconds aborts the connection (its
  buffer is freed at once); request bodies get the same floor in
  bodies.BoundedBody, as a 408;
- when the server closes while the client is still sending a body, it
  shuts its sending side first and reads and drops the rest for at most
  ``LINGER_SECONDS`` / ``LINGER_BYTES`` (nginx's "lingering close"), so the
  client reads the answer; a shutdown ends the lingering at once;
- past ``MAX_CONNECTIONS`` open connections in the worker, a new one gets
  a 503 problem with Retry-After and is closed;
- shortly before Hypercorn's ``graceful_timeout`` runs out at shutdown,
  request bodies still arriving end with a 503 (bodies.end_bodies), so
  their handlers answer and clean up instead of being cancelled;
- the socket is read ``SOCKET_READ_BYTES`` at a time, through
  :class:`WholeReadsStreamReader` (asyncio 3.11's StreamReader, which
  copies every read three times, handing a read on whole when it can);
- on HTTP/1.1 (:class:`HTTP1Protocol`, with h11 0.16's ``Connection._reader``,
  ``_receive_buffer`` and ``ContentLengthReader._remaining``) a read that
  is all body, and not its end, goes to the stream as it was read, where
  h11 and Hypercorn would copy it four times;
- :func:`worker_function` is what a worker process runs, for the
  supervisor that replaces run()'s (ops/supervisor.py);
- :func:`watch_worker` wraps ``worker_serve``, the coroutine a worker runs
  Hypercorn in, to hand its bind and workers to the app's startup line and
  note when the shutdown signal came (ops/lifecycle.py).

Hypercorn 0.18, HTTP/2: rapid reset (CVE-2023-44487), runaway streams, h2c.

Why Hypercorn's own are not enough against HEADERS+RST_STREAM in a loop:
h2 counts only open streams against ``h2_max_concurrent_streams``, and a
reset stream is closed at once, though its app task has been started; so
nothing bounds the apps running. Hypercorn's fix for the CVE (0.15),
GOAWAY after ``keep_alive_max_requests`` (1000), still handles the rest of
the read (thousands of streams per 256 KiB read) and the client just
reconnects. h2 parses a whole read before Hypercorn sees a frame (long
enough to hold up every other connection of the worker). A stream reset
before its app ended the response keeps its send buffer and priority-tree
place; the 1001st raises out of the
connection. And a closed connection lingers for keep_alive_timeout when a
late app restarts its idle timer, holding its TLS buffers. (Figures:
README, "Why the code is shaped this way".)

So, on HTTP/2 connections only (HTTP/1.1 never reaches this code):

- h2 gets at most ``READ_SLICE_BYTES`` at a time, with a yield to the
  event loop between slices, and nothing more once we told it to go away.
- A stream counts against its connection and the worker from its HEADERS
  until its app returns. Past ``h2_max_concurrent_streams`` on the
  connection or ``H2_MAX_STREAMS_PER_WORKER`` in the worker, a new stream
  gets RST_STREAM(REFUSED_STREAM): not processed, safe to retry (RFC 9113
  section 8.7).
- Resetting a stream whose app has not returned, or being refused for
  the connection's own limit, spends the connection's ``RESET_BUDGET``
  (refilled over ``RESET_WINDOW_SECONDS``); then GOAWAY(ENHANCE_YOUR_CALM)
  and close.
- A stream reset before its app task ran never calls the app; a running
  app gets ``http.disconnect``, on which Quart cancels the handler. Its
  send buffer and priority place go; a closed connection lets its apps'
  pending sends finish and never restarts its idle timer.
- Request body still arriving for a stream that has gone (its app answered
  early: a 401, a 413) is dropped and its bytes given back to the window.
  Hypercorn 0.18 fails on it with a KeyError that ends the connection's
  task, and with it every stream on the connection (pgjones/hypercorn#329).

h2c is off: ``Upgrade: h2c`` is not acted on (answered over HTTP/1.1, as
RFC 9110 section 7.8 allows) and the prior-knowledge preface gets
GOAWAY(HTTP_1_1_REQUIRED). HTTP/2 is where ALPN negotiates it, over TLS.
README "HTTP/2" says why.

tests/unit/test_h2_limits.py pins the Hypercorn internals used here and fails if
an upgrade changes them; tests/e2e/test_h2_abuse.py attacks a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import signal
import ssl
import sys
import termios
import time
from collections.abc import Awaitable, Callable, Iterable
from ssl import SSLError
from typing import Any, SupportsIndex

import h2.events
import h2.exceptions
import h11
import hypercorn.asyncio.run as hypercorn_run
import hypercorn.protocol
from h2.errors import ErrorCodes
from h2.stream import StreamState
from h11._readers import ContentLengthReader
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.events import Body
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol
from hypercorn.typing import (
    AppWrapper,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from priority.priority import MissingStreamError
from quart import Quart
from quart.asgi import ASGIHTTPConnection
from quart.routing import QuartRule
from quart.utils import cancel_tasks, raise_task_exceptions
from quart.wrappers import Request

from quart_app.config import Settings
from quart_app.edge.bodies import BoundedBody, end_bodies, shutting_down
from quart_app.edge.connection_limits import ConnectionLimits, MemoryReturner, refusal
from quart_app.edge.problem_details import raw_problem
from quart_app.ops import lifecycle

# Bytes asked of the socket per read. Hypercorn's own 64 KiB makes every GiB
# 16,384 trips through h11, Hypercorn, Quart and the body reader, and that
# Python work per read, not the disk, bounded uploads; 256 KiB is asyncio's
# largest recv (README, "Why the code is shaped this way").
# Memory stays bounded: Hypercorn queues at most max_app_queue_size reads
# (hypercorn.toml) while the app's body buffer is full.
SOCKET_READ_BYTES = 256 * 1024
# Seconds before the graceful timeout runs out at which request bodies still
# arriving are ended with a 503: enough for their handlers to answer and
# remove their temp files before Hypercorn cancels what is left.
SHUTDOWN_MARGIN_SECONDS = 1.0
# Seconds between looks at a shutdown while lingering.
LINGER_POLL_SECONDS = 0.1


# -- Werkzeug -------------------------------------------------------------------


class LazyBuilderRule(QuartRule):
    """Werkzeug compiles two builder functions for every rule as it is added
    (``Rule.compile`` calls ``_compile_builder`` twice: an AST made, then
    compiled and executed), which was 80 % of ``create_app``'s time, yet
    ``url_for`` names eleven endpoints of 35. Each builder is compiled on its
    first call instead, from the rule as it is then; ``compile`` (a rebind)
    puts new, uncompiled ones in place."""

    def _compile_builder(self, append_unknown: bool = True) -> Callable[..., tuple[str, str]]:
        compile_builder = super()._compile_builder
        compiled: Callable[..., tuple[str, str]] | None = None

        # ``rule`` positional only: a URL value may be called "rule" too
        # (Werkzeug's own builder names it ".self", which no value can be).
        def build(rule: QuartRule, /, *args: Any, **kwargs: Any) -> tuple[str, str]:
            nonlocal compiled
            if compiled is None:
                compiled = compile_builder(append_unknown)
            return compiled(rule, *args, **kwargs)

        return build


# -- Quart ----------------------------------------------------------------------


class BoundedRequest(Request):
    body_class = BoundedBody  # type: ignore[assignment]  # Body's interface, our own class


class BackPressureHTTPConnection(ASGIHTTPConnection):
    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        # Quart 0.22's own __call__, with the response start watched and
        # cancellation answered (see the module docstring).
        started = False
        request: Request | None = None

        async def watched_send(message: ASGISendEvent) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                body = request.body if request is not None else None
                if isinstance(body, BoundedBody) and not body.complete:
                    body.abandon()
                    if self.scope["http_version"] in ("1.0", "1.1"):
                        headers = [*message["headers"], (b"connection", b"close")]
                        message = {**message, "headers": headers}
            await send(message)

        request = self._create_request_from_scope(watched_send)
        receiver_task = asyncio.ensure_future(self.handle_messages(request, receive))
        handler_task = asyncio.ensure_future(self.handle_request(request, watched_send))
        try:
            done, pending = await asyncio.wait(
                [handler_task, receiver_task], return_when=asyncio.FIRST_COMPLETED
            )
            body = request.body
            if handler_task in pending and isinstance(body, BoundedBody) and body.disconnect_unread:
                # The client is gone (the receive loop ended) with bytes it
                # sent still buffered: the handler reads them, then meets
                # ClientDisconnected, before anything is cancelled. Quart
                # would cancel it at once and lose them.
                await asyncio.wait([handler_task])
                done, pending = {handler_task, receiver_task}, set()
        except asyncio.CancelledError:
            for task in (handler_task, receiver_task):
                task.cancel()
            await asyncio.gather(handler_task, receiver_task, return_exceptions=True)
            if not started:
                await _send_shutting_down(send)
            raise
        await cancel_tasks(pending)
        raise_task_exceptions(done)

    async def handle_messages(self, request: Request, receive: ASGIReceiveCallable) -> None:
        body = request.body
        assert isinstance(body, BoundedBody)
        while True:
            # Not calling receive() is the back-pressure: Hypercorn's queue
            # fills and it stops reading the socket.
            await body.wait_for_room()
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
            elif message["type"] == "http.disconnect":
                body.set_disconnected()
                return


async def _send_shutting_down(send: ASGISendCallable) -> None:
    """503 for a request whose handler was cancelled before it answered:
    the same problem its body would have raised."""
    status, headers, body = raw_problem(shutting_down())
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
    except Exception:
        pass  # the connection is already gone: nothing to tell


# -- Hypercorn --------------------------------------------------------------------


class WholeReadsStreamReader(asyncio.StreamReader):
    """asyncio's StreamReader (Python 3.11) with one change: a socket read
    that arrives while nothing is buffered is kept as it came and handed to
    the next ``read(n)`` that can take it whole. StreamReader copies every
    read three times (into its bytearray, then a slice and bytes() out of
    it), ~0.5-0.8 s of CPU per GiB here. Anything else (a partial read, a
    second read arriving before the first was taken, readline and the like,
    a read arriving while one of those waits) is StreamReader's own path,
    on its own buffer."""

    # Invariant: while a read is kept, the buffer is empty.
    _kept: bytes | None = None
    # read() is what waits for data (not readline and the like, which look
    # only at the buffer once woken).
    _read_waits = False
    # StreamReader's own, which typeshed leaves out (canary:
    # tests/unit/test_server_internals.py).
    _buffer: bytearray
    _eof: bool
    _exception: BaseException | None
    _transport: asyncio.ReadTransport | None
    _paused: bool
    _limit: int
    _waiter: asyncio.Future[None] | None
    _wakeup_waiter: Callable[[], None]
    _wait_for_data: Callable[[str], Awaitable[None]]
    _maybe_resume_transport: Callable[[], None]

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        if (
            self._kept is None
            and not self._buffer
            and type(data) is bytes
            and data
            and (self._waiter is None or self._read_waits)
        ):
            assert not self._eof, "feed_data after feed_eof"
            self._kept = data
            self._wakeup_waiter()
            # StreamReader's pause, for the bytes it would have buffered.
            if self._transport is not None and not self._paused and len(data) > 2 * self._limit:
                try:
                    self._transport.pause_reading()
                except NotImplementedError:
                    self._transport = None
                else:
                    self._paused = True
            return
        self._give_back()
        super().feed_data(data)

    def _give_back(self) -> None:
        """The kept read into the buffer, for StreamReader's own path."""
        if self._kept is not None:
            self._buffer.extend(self._kept)
            self._kept = None

    async def read(self, n: int = -1) -> bytes:
        if self._exception is None and n > 0:
            if self._kept is None and not self._buffer and not self._eof:
                self._read_waits = True
                try:
                    await self._wait_for_data("read")
                finally:
                    self._read_waits = False
            kept = self._kept
            if kept is not None and len(kept) <= n:
                self._kept = None
                self._maybe_resume_transport()
                return kept
        self._give_back()
        return await super().read(n)

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        self._give_back()
        return await super().readuntil(separator)

    async def readexactly(self, n: int) -> bytes:
        self._give_back()
        return await super().readexactly(n)

    def at_eof(self) -> bool:
        return self._kept is None and super().at_eof()


class TransferTooSlow(Exception):
    """A client read the response slower than the minimum transfer rate."""


class GuardedTCPServer(TCPServer):
    limits: ConnectionLimits | None = None
    on_shutdown_deadline: Any = None  # () -> None, set by install()
    open_connections = 0
    memory = MemoryReturner()
    _watched: set[int] = set()
    _watchers: set[asyncio.Task[None]] = set()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if type(self.reader) is asyncio.StreamReader:
            # Made by asyncio.start_server before this connection's task.
            self.reader.__class__ = WholeReadsStreamReader
        self._last_activity = time.monotonic()
        self._linger_until: float | None = None
        self._read_timeout: asyncio.Timeout | None = None
        self._lingered = 0

    @property
    def _limits(self) -> ConnectionLimits:
        assert self.limits is not None, "install() sets the limits"
        return self.limits

    async def run(self) -> None:
        self._watch_shutdown()
        cls = GuardedTCPServer
        if cls.open_connections >= self._limits.max_connections:
            await self._refuse()
            return
        cls.open_connections += 1
        try:
            await super().run()
        except asyncio.CancelledError:
            # The graceful timeout ran out: this connection is the top of its
            # task, and asyncio's start_server would log a cancelled one as
            # an error with a traceback; it is an expected end here.
            pass
        finally:
            cls.open_connections -= 1
            cls.memory.connection_closed()

    async def _refuse(self) -> None:
        try:
            with contextlib.suppress(Exception):
                self.writer.write(refusal())
                async with asyncio.timeout(1):
                    await self.writer.drain()
                self.writer.write_eof()
                # What the client already sent is read and dropped briefly,
                # so the close is not a reset that could swallow the 503.
                async with asyncio.timeout(1):
                    while await self.reader.read(SOCKET_READ_BYTES):
                        pass
        finally:
            self.writer.transport.abort()

    def _watch_shutdown(self) -> None:
        """One watcher per worker: when shutdown starts, end the request
        bodies still arriving shortly before the graceful timeout."""
        key = id(self.context)
        if key in GuardedTCPServer._watched or self.on_shutdown_deadline is None:
            return
        GuardedTCPServer._watched.add(key)
        task = asyncio.ensure_future(self._end_bodies_before_deadline())
        GuardedTCPServer._watchers.add(task)
        task.add_done_callback(GuardedTCPServer._watchers.discard)

    async def _end_bodies_before_deadline(self) -> None:
        await self.context.terminated.wait()
        graceful = float(self.config.graceful_timeout)
        await asyncio.sleep(max(graceful - SHUTDOWN_MARGIN_SECONDS, graceful / 2))
        self.on_shutdown_deadline()

    # -- reading -----------------------------------------------------------
    async def _read_data(self) -> None:
        while not self.reader.at_eof():
            try:
                async with asyncio.timeout(self._read_wait()) as self._read_timeout:
                    data = await self.reader.read(SOCKET_READ_BYTES)
                self._read_timeout = None
            except TimeoutError:
                if self._linger_until is not None:
                    if self._linger_over():
                        break
                elif self._idle_for() >= self._limits.idle_timeout:
                    break
                continue
            except (ConnectionError, OSError, SSLError):
                break
            self._last_activity = time.monotonic()
            if self._linger_until is not None:
                # The answer is sent and our side is shut: drop the rest.
                self._lingered += len(data)
                if self._lingered > self._limits.linger_bytes or self._linger_over():
                    break
                continue
            await self.protocol.handle(RawData(data))
        await self.protocol.handle(Closed())
        # Hypercorn's keep-alive timer would otherwise hold a connection the
        # client has closed open (CLOSE-WAIT) until keep_alive_timeout.
        await self.idle_task.stop()

    def _idle_for(self) -> float:
        return time.monotonic() - self._last_activity

    def _read_wait(self) -> float:
        if self._linger_until is not None:
            # Short slices, so that a shutdown ends the lingering promptly.
            return min(max(self._linger_until - time.monotonic(), 0.0), LINGER_POLL_SECONDS)
        return max(self._limits.idle_timeout - self._idle_for(), 0.01)

    def _linger_over(self) -> bool:
        assert self._linger_until is not None
        return time.monotonic() >= self._linger_until or self.context.terminated.is_set()

    # -- writing -----------------------------------------------------------
    async def protocol_send(self, event: Any) -> None:
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            try:
                self.writer.write(event.data)
                await self._drain()
            except TransferTooSlow:
                # Drop the unsent bytes now: nobody is reading them.
                self.writer.transport.abort()
                await self.protocol.handle(Closed())
            except (ConnectionError, RuntimeError):
                await self.protocol.handle(Closed())

    async def _drain(self) -> None:
        transport = self.writer.transport
        _, high_water = transport.get_write_buffer_limits()
        if transport.get_write_buffer_size() <= high_water:
            # Not paused: what was written before has gone, so bytes moved.
            await self.writer.drain()  # returns at once
            self._last_activity = time.monotonic()
            return
        limits = self._limits
        while True:
            before = self._unsent_bytes()
            try:
                async with asyncio.timeout(limits.rate_window):
                    await self.writer.drain()
            except TimeoutError:
                moved = before - self._unsent_bytes()
                if moved < limits.min_rate * limits.rate_window:
                    raise TransferTooSlow() from None
                self._last_activity = time.monotonic()
                continue
            self._last_activity = time.monotonic()
            return

    def _unsent_bytes(self) -> int:
        """Bytes written and not yet taken by the client: the transport's
        buffer and the kernel's send queue. The transport's alone can stand
        still for a whole window while a client reads steadily from the
        kernel's queue (uvloop hands libuv large writes that the kernel takes
        in bursts), which would look like a stalled client."""
        unsent = self.writer.transport.get_write_buffer_size()
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
                unsent += int.from_bytes(queued, sys.byteorder, signed=True)
        return unsent

    # -- closing -----------------------------------------------------------
    async def _close(self) -> None:
        if self._linger_until is None and self._client_still_sending():
            # Shut our side (the client sees the answer, then the end) and
            # let _read_data drop what is still coming, within bounds.
            self._linger_until = time.monotonic() + self._limits.linger_seconds
            with contextlib.suppress(NotImplementedError, OSError, RuntimeError):
                self.writer.write_eof()
            if self._read_timeout is not None:
                # A read already waiting was given the idle timeout: bring
                # it to the lingering's own short slices now.
                loop = asyncio.get_running_loop()
                # (a read that has just ended has a finished timeout: then
                # the next read starts with the lingering's slices anyway)
                with contextlib.suppress(RuntimeError):
                    self._read_timeout.reschedule(loop.time() + LINGER_POLL_SECONDS)
            return
        try:
            await super()._close()
        except OSError as error:
            # Under uvloop (hypercorn.toml's worker_class) a peer already gone
            # is ENOTCONN from wait_closed, which Hypercorn does not expect
            # (asyncio's loop says ConnectionResetError, which it does): the
            # connection is closed all the same, and its idle task stopped.
            if error.errno != errno.ENOTCONN:
                raise

    def _client_still_sending(self) -> bool:
        if self.reader.at_eof() or self.context.terminated.is_set():
            return False
        protocol = getattr(getattr(self, "protocol", None), "protocol", None)
        if not isinstance(protocol, H11Protocol):
            return False
        connection = protocol.connection
        return isinstance(connection, h11.Connection) and connection.their_state is h11.SEND_BODY


def install(settings: Settings, on_shutdown_deadline: Any) -> None:
    """Serve every new connection of this worker with GuardedTCPServer."""
    GuardedTCPServer.limits = ConnectionLimits.from_settings(settings)
    GuardedTCPServer.on_shutdown_deadline = staticmethod(on_shutdown_deadline)
    # worker_serve looks the name up in its module for every new connection.
    setattr(hypercorn_run, "TCPServer", GuardedTCPServer)  # noqa: B010


def watch_worker(
    serving_with: Callable[[list[str], list[str], int], None], signalled: Callable[[], None]
) -> None:
    """Wrap ``hypercorn.asyncio.run.worker_serve`` (looked up by name when a
    worker starts, after the app is loaded): ``serving_with(bind,
    insecure_bind, workers)`` before the app's startup, ``signalled()`` when
    the shutdown trigger fires.
    Without a trigger of its own (``workers = 0``) Hypercorn waits for SIGINT
    or SIGTERM; so does the one given here."""
    serve = getattr(hypercorn_run.worker_serve, "__wrapped__", hypercorn_run.worker_serve)

    @functools.wraps(serve)
    async def watched_serve(
        app: AppWrapper,
        config: Any,
        *,
        sockets: Any = None,
        shutdown_trigger: Callable[[], Any] | None = None,
    ) -> None:
        serving_with(list(config.bind), list(config.insecure_bind), int(config.workers))
        trigger = shutdown_trigger or _signal_trigger()

        async def noting_trigger() -> None:
            await trigger()
            signalled()

        await serve(app, config, sockets=sockets, shutdown_trigger=noting_trigger)

    setattr(hypercorn_run, "worker_serve", watched_serve)  # noqa: B010


def _signal_trigger() -> Callable[[], Any]:
    """What worker_serve does without a trigger: wait for SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    received = asyncio.Event()
    for name in ("SIGINT", "SIGTERM"):
        loop.add_signal_handler(getattr(signal, name), received.set)
    return received.wait


def worker_function(config: Any) -> Callable[..., None]:
    """The function a Hypercorn worker process runs for ``worker_class``
    (``asyncio_worker(config, sockets, shutdown_event)``): what
    ops/supervisor.py starts in each worker, as Hypercorn's run() does (its
    canary in tests/unit/test_server_internals.py)."""
    workers: dict[str, Callable[..., None]] = {
        "asyncio": hypercorn_run.asyncio_worker,
        "uvloop": hypercorn_run.uvloop_worker,
    }
    if config.worker_class not in workers:
        raise ValueError(f"worker_class {config.worker_class!r}: asyncio or uvloop")
    return workers[config.worker_class]


# -- Hypercorn, HTTP/2 -------------------------------------------------------------


# Count: resets of streams whose app had not returned that one connection
# may send in a burst; refilled at RESET_BUDGET per RESET_WINDOW_SECONDS.
# A browser cancels a page's requests when the user navigates away (tens
# at a time); the attack resets thousands a second. Netty's default for
# the same purpose: 200 RST_STREAM frames per 30 s.
RESET_BUDGET = 200
RESET_WINDOW_SECONDS = 30.0

# Bytes of a socket read handed to h2 at a time: small enough that parsing
# one slice of HEADERS + RST_STREAM pairs does not hold up the worker
# (README, "Why the code is shaped this way").
READ_SLICE_BYTES = 16 * 1024


class WorkerStreams:
    """HTTP/2 streams whose app has not returned, over all the worker's
    (process's) connections."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0

    def acquire(self) -> bool:
        if self.running >= self.limit:
            return False
        self.running += 1
        return True

    def release(self) -> None:
        self.running -= 1


WORKER_STREAMS = WorkerStreams(Settings.H2_MAX_STREAMS_PER_WORKER)


class ResetBudget:
    """A token bucket: RESET_BUDGET tokens, refilled over RESET_WINDOW_SECONDS."""

    __slots__ = ("stamp", "tokens")

    def __init__(self) -> None:
        self.tokens = float(RESET_BUDGET)
        self.stamp = time.monotonic()

    def spend(self) -> bool:
        now = time.monotonic()
        refill = (now - self.stamp) * RESET_BUDGET / RESET_WINDOW_SECONDS
        self.tokens = min(float(RESET_BUDGET), self.tokens + refill)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class StreamApp:
    """The app as one stream runs it; holds the stream's place in its
    connection's and the worker's counts until the app returns."""

    __slots__ = ("app", "closed", "created", "protocol", "released", "stream_id")

    def __init__(self, app: AppWrapper, protocol: LimitedH2Protocol, stream_id: int) -> None:
        self.app = app
        self.protocol = protocol
        self.stream_id = stream_id
        self.closed = False  # the stream ended (reset, connection closed) first
        self.created = False  # Hypercorn made the stream (and its task)
        self.released = False

    async def __call__(
        self,
        scope: Scope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        sync_spawn: Callable[..., Any],
        call_soon: Callable[..., Any],
    ) -> None:
        try:
            if not self.closed:
                await self.app(scope, receive, send, sync_spawn, call_soon)
        finally:
            self.release()
            if self.closed:
                await self.protocol.forget_stream(self.stream_id)

    def release(self) -> None:
        if not self.released:
            self.released = True
            WORKER_STREAMS.release()
            self.protocol.stream_apps.pop(self.stream_id, None)

    def __del__(self) -> None:
        # A task cancelled before it first ran (its connection's task group
        # torn down by an error) never reaches the finally above; the
        # connection is gone then, so only the worker's count is left.
        if not self.released:
            self.released = True
            WORKER_STREAMS.release()


class LimitedH2Protocol(H2Protocol):
    """Hypercorn's HTTP/2 protocol with the limits described above."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_apps: dict[int, StreamApp] = {}
        self.reset_budget = ResetBudget()
        self.going_away = False
        self.last_admitted = 0
        self._send_event = self.send
        self.send = self._send
        # Response bytes each stream has sent, and what it had sent at the
        # last look of the send-rate watch (_enforce_send_rate).
        self.stream_sent: dict[int, int] = {}
        self._sent_at_last_look: dict[int, int] = {}
        self._ended = asyncio.Event()
        send_data = self.connection.send_data

        def counting_send_data(stream_id: int, data: bytes, *args: Any, **kwargs: Any) -> None:
            self.stream_sent[stream_id] = self.stream_sent.get(stream_id, 0) + len(data)
            send_data(stream_id, data, *args, **kwargs)

        self.connection.send_data = counting_send_data  # type: ignore[method-assign,assignment]

    async def _send(self, event: Event) -> None:
        if isinstance(event, Updated) and (self.closed or self.going_away):
            return  # an app ending late would restart a closed connection's idle timer
        if isinstance(event, Closed):
            # Closing TLS while the client still sends fails with SSLError
            # (application data after close notify), closed all the same;
            # raised, it would tear down the connection's task group.
            with contextlib.suppress(ssl.SSLError):
                await self._send_event(event)
        else:
            await self._send_event(event)

    async def initiate(
        self, headers: list[tuple[bytes, bytes]] | None = None, settings: bytes | None = None
    ) -> None:
        if not self.ssl:  # h2c by prior knowledge (HTTP1Protocol never upgrades)
            self.connection.initiate_connection()
            self.connection.close_connection(error_code=ErrorCodes.HTTP_1_1_REQUIRED)
            await self._go_away()
            return
        await super().initiate(headers, settings)
        self.task_group.spawn(self._enforce_send_rate)

    async def _enforce_send_rate(self) -> None:
        """The response side of the rate floor, per stream. Flow control
        lets a client that grants no window stall a stream's response
        without a byte reaching the socket (GuardedTCPServer's floor sees
        nothing) while the stream keeps its worker slot, and PINGs keep the
        connection from looking idle. A stream whose response waited a whole
        window and moved less than MIN_TRANSFER_RATE x TRANSFER_RATE_WINDOW
        is cancelled (RST_STREAM CANCEL), spending the connection's reset
        budget like a client's reset would."""
        limits = GuardedTCPServer.limits
        if limits is None or not limits.min_rate:
            return
        floor = limits.min_rate * limits.rate_window
        while not (self.closed or self.going_away):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limits.rate_window):
                    await self._ended.wait()
            if self.closed or self.going_away:
                return
            waiting = {sid for sid, buffer in self.stream_buffers.items() if buffer.buffer}
            for stream_id in waiting:
                sent = self.stream_sent.get(stream_id, 0)
                last = self._sent_at_last_look.get(stream_id)
                if last is not None and sent - last < floor:
                    await self._cancel_stalled(stream_id)
                else:
                    self._sent_at_last_look[stream_id] = sent
            for stream_id in set(self._sent_at_last_look) - waiting:
                del self._sent_at_last_look[stream_id]

    async def _cancel_stalled(self, stream_id: int) -> None:
        self._sent_at_last_look.pop(stream_id, None)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.connection.reset_stream(stream_id, ErrorCodes.CANCEL)
        await self._flush()
        await self._close_stream(stream_id)
        await self._window_updated(stream_id)  # lets the sender drop its buffer
        if not self.reset_budget.spend():
            self.connection.close_connection(
                error_code=ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=self.last_admitted
            )
            await self._go_away()

    async def _send_data(self, stream_id: int) -> None:
        await super()._send_data(stream_id)
        # The response has ended (END_STREAM sent) while the client is still
        # sending its request: RFC 9113 section 8.1 lets the server ask it to
        # stop without error, rather than take a body nobody reads.
        stream = self.connection.streams.get(stream_id)
        if stream is not None and stream.state_machine.state is StreamState.HALF_CLOSED_LOCAL:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.connection.reset_stream(stream_id, ErrorCodes.NO_ERROR)
                await self._flush()

    async def handle(self, event: Event) -> None:
        if isinstance(event, RawData):
            data = event.data
            for start in range(0, len(data), READ_SLICE_BYTES):
                if start:
                    await self.context.sleep(0)
                if self.going_away or self.closed:
                    return
                await super().handle(RawData(data=data[start : start + READ_SLICE_BYTES]))
        elif isinstance(event, Closed):
            await self._end_streams()
        else:
            await super().handle(event)

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        passed: list[h2.events.Event] = []
        admitted: set[int] = set()
        try:
            for event in events:
                if isinstance(event, h2.events.RequestReceived):
                    if not self.context.terminated.is_set():  # else Hypercorn refuses it
                        if not self._admit(event.stream_id):
                            self._refuse(event.stream_id)
                            if self.going_away:
                                break
                            continue
                        admitted.add(event.stream_id)
                elif isinstance(event, h2.events.DataReceived):
                    await self._handle_data(passed, event)
                    passed = []
                    continue
                elif (
                    isinstance(event, h2.events.StreamReset)
                    and event.stream_id in self.stream_apps
                    and not self.reset_budget.spend()
                ):
                    self.going_away = True
                    break
                passed.append(event)
            await super()._handle_events(passed)
        finally:
            for stream_id in admitted:
                stream_app = self.stream_apps.get(stream_id)
                if stream_app is not None and not stream_app.created:
                    stream_app.release()  # an error came before its stream was made
        if self.going_away:
            self.connection.close_connection(
                error_code=ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=self.last_admitted
            )
            await self._go_away()

    async def _handle_data(
        self, before: list[h2.events.Event], event: h2.events.DataReceived
    ) -> None:
        """Hypercorn looks a DATA event's stream up when it reaches it and
        fails if the stream has gone (KeyError out of the connection's task:
        the connection and all its streams torn down; pgjones/hypercorn#329,
        unfixed in 0.18). A stream goes when its app has answered, and an
        app answering early (401, 413) can do so while the events before
        this one, parsed from the same read, are handled (they await). So
        those go first, and the stream is looked up right before Hypercorn
        does, with no await between."""
        if before:
            await super()._handle_events(before)
        if event.stream_id not in self.streams:
            # A refused stream's body (parsed with its HEADERS) or one still
            # coming after the response: the window wants it back.
            self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        await super()._handle_events([event])

    def _admit(self, stream_id: int) -> bool:
        if len(self.stream_apps) >= self.config.h2_max_concurrent_streams:
            # Only resets get a connection here (h2 holds it to as many
            # open streams), so this spends the budget as a reset does.
            self.going_away = not self.reset_budget.spend()
            return False
        if not WORKER_STREAMS.acquire():
            return False
        self.stream_apps[stream_id] = StreamApp(self.app, self, stream_id)
        self.last_admitted = stream_id
        return True

    def _refuse(self, stream_id: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError):  # reset in the same read
            self.connection.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)

    async def _create_stream(self, request: h2.events.RequestReceived) -> None:
        stream_app = self.stream_apps.get(request.stream_id)
        if stream_app is None:  # a server push: not admitted by _handle_events
            await super()._create_stream(request)
            return
        stream_app.created = True
        # Hypercorn builds the stream from self.app before its first await,
        # so the swap is seen by this stream only.
        app, self.app = self.app, stream_app
        try:
            await super()._create_stream(request)
        finally:
            self.app = app

    async def _close_stream(self, stream_id: int) -> None:
        stream_app = self.stream_apps.get(stream_id)
        if stream_app is not None:
            stream_app.closed = True
        await super()._close_stream(stream_id)

    async def forget_stream(self, stream_id: int) -> None:
        """Let the sending task drop a stream whose app ended without ending
        the response (Hypercorn keeps its buffer and priority place until
        it sees that end)."""
        buffer = self.stream_buffers.get(stream_id)
        if buffer is not None and stream_id not in self.streams:
            buffer.set_complete()
            with contextlib.suppress(MissingStreamError):
                self.priority.unblock(stream_id)
            await self.has_data.set()

    async def _end_streams(self) -> None:
        """Hypercorn's end of the connection, then its send buffers': an app
        still sending waits on its buffer for the sending task, which has
        just stopped; closed, the buffer lets the app finish."""
        self._ended.set()
        await super().handle(Closed())
        for buffer in list(self.stream_buffers.values()):
            await buffer.close()
        # A stream whose task was cancelled before it ran would otherwise
        # give its worker slot back only when the garbage collector frees it.
        for stream_app in list(self.stream_apps.values()):
            if not stream_app.created:
                stream_app.release()

    async def _go_away(self) -> None:
        """Send what h2 has queued (the GOAWAY), end every stream, close."""
        self.going_away = True
        await self._flush()
        await self._end_streams()
        await self.send(Closed())


class HTTP1Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1, not acting on ``Upgrade: h2c``. Only the
    prior-knowledge preface (``PRI * HTTP/2.0``) goes on to Hypercorn's
    check, which hands the connection to LimitedH2Protocol to refuse."""

    async def _check_protocol(self, event: h11.Request) -> None:
        if event.method == b"PRI":
            await super()._check_protocol(event)

    async def handle(self, event: Event) -> None:
        # A socket read that is all body, and not its end, goes to the
        # stream as it came: h11 would copy it three times (into its
        # buffer, then two slices out) and Hypercorn once more (bytes() of
        # h11's bytearray). The end of the body, chunked bodies and
        # anything h11 has buffered still go through h11.
        connection = self.connection
        if (
            isinstance(event, RawData)
            and self.stream is not None
            and isinstance(connection, h11.Connection)
        ):
            reader = connection._reader
            if (
                type(reader) is ContentLengthReader
                and connection.their_state is h11.SEND_BODY
                and not connection._receive_buffer
                and not connection.client_is_waiting_for_100_continue
                and 0 < len(event.data) < reader._remaining
            ):
                # What h11's next_event does for a Data event in
                # SEND_BODY: nothing but count it off the length.
                reader._remaining -= len(event.data)
                await self.stream.handle(Body(stream_id=STREAM_ID, data=event.data))
                return
        await super().handle(event)


def install_http2_limits(settings: Settings) -> None:
    """Hypercorn looks its protocol classes up by these names for every
    new connection."""
    WORKER_STREAMS.limit = settings.H2_MAX_STREAMS_PER_WORKER
    setattr(hypercorn.protocol, "H2Protocol", LimitedH2Protocol)  # noqa: B010
    setattr(hypercorn.protocol, "H11Protocol", HTTP1Protocol)  # noqa: B010


def init_app(app: Quart, settings: Settings) -> None:
    """Quart serves requests with the classes above; Hypercorn serves this
    worker's new connections with GuardedTCPServer."""
    app.request_class = BoundedRequest
    app.asgi_http_class = BackPressureHTTPConnection
    install(settings, end_bodies)
    install_http2_limits(settings)
    watch_worker(lifecycle.serving_with, lifecycle.shutdown_signalled)
