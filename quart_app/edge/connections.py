"""Connections: Hypercorn's asyncio TCP server with the bounds it lacks.

Hypercorn 0.18 runs one ``hypercorn.asyncio.tcp_server.TCPServer`` per
connection. As shipped it:

- closes a connection when nothing was *read* for ``read_timeout`` seconds,
  even while it is writing a long response to a client that reads steadily
  (a 200 MB download at 2.5 MB/s was cut at 60 s after a 200 in the log);
- waits forever in ``drain()`` for a client that stopped reading, holding
  the unsent part of the response (800 such clients held 1.47 GB);
- closes at once after an early answer (a 412 before a 50 MB body), so the
  unread body in the receive queue turns the close into a reset, and the
  client may never see the answer;
- accepts any number of connections per worker;
- reads the socket 64 KiB at a time (a module constant).

:class:`GuardedTCPServer` replaces it (``install``) and keeps the rest:

- a connection is idle only when nothing moved in either direction for
  ``IDLE_TIMEOUT`` seconds; Hypercorn's ``read_timeout`` is not used;
- a response write that moves fewer than ``MIN_TRANSFER_RATE`` bytes a
  second over ``TRANSFER_RATE_WINDOW`` seconds aborts the connection (its
  buffer is freed at once); request bodies get the same floor in
  streaming.BoundedBody, as a 408;
- when the server closes while the client is still sending a body, it
  shuts its sending side first and reads and drops the rest for at most
  ``LINGER_SECONDS`` / ``LINGER_BYTES`` (nginx's "lingering close"), so the
  client reads the answer; a shutdown ends the lingering at once;
- past ``MAX_CONNECTIONS`` open connections in the worker, a new one gets
  a 503 problem with Retry-After and is closed;
- shortly before Hypercorn's ``graceful_timeout`` runs out at shutdown,
  request bodies still arriving end with a 503 (streaming.end_bodies), so
  their handlers answer and clean up instead of being cancelled;
- the socket is read ``SOCKET_READ_BYTES`` at a time.

tests/test_connections.py pins the Hypercorn internals this relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import time
from dataclasses import dataclass
from ssl import SSLError
from typing import Any

import h11
import hypercorn.asyncio.run as hypercorn_run
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.events import Closed, RawData
from hypercorn.protocol.h11 import H11Protocol

from quart_app.config import Settings
from quart_app.edge.problem_details import raw_problem, status_phrase
from quart_app.errors import TooManyConnections

# Bytes asked of the socket per read. Hypercorn's own 64 KiB makes every GiB
# 16,384 trips through h11, Hypercorn, Quart and the body reader; 256 KiB
# (asyncio's largest recv) took ~40 % less CPU per GiB (README "Performance").
# Memory stays bounded: Hypercorn queues at most max_app_queue_size reads
# (hypercorn.toml) while the app's body buffer is full.
SOCKET_READ_BYTES = 256 * 1024
# Seconds before the graceful timeout runs out at which request bodies still
# arriving are ended with a 503: enough for their handlers to answer and
# remove their temp files before Hypercorn cancels what is left.
SHUTDOWN_MARGIN_SECONDS = 1.0
LINGER_POLL_SECONDS = 0.1


def _libc_malloc_trim() -> Any:
    """glibc's malloc_trim, or None (another libc)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


class MemoryReturner:
    """Hands freed heap memory back to the system after connections close.

    A response chunk (1 MiB) or a body buffer is too small for glibc to map
    it on its own, so it comes from the heap; freed, it stays in the process
    (300 stalled downloads took a worker from 88 to 403 MiB, and after they
    were gone it stayed at 155). malloc_trim(0) returns the free pages; it
    runs at most once per TRIM_INTERVAL_SECONDS, when a connection closes.
    """

    TRIM_INTERVAL_SECONDS = 1.0

    def __init__(self) -> None:
        self._trim = _libc_malloc_trim()
        self._last = 0.0

    def connection_closed(self) -> None:
        now = time.monotonic()
        if self._trim is not None and now - self._last >= self.TRIM_INTERVAL_SECONDS:
            self._last = now
            self._trim(0)


class TransferTooSlow(Exception):
    """A client read the response slower than the minimum transfer rate."""


@dataclass(frozen=True)
class ConnectionLimits:
    idle_timeout: float
    min_rate: int
    rate_window: float
    linger_seconds: float
    linger_bytes: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            idle_timeout=settings.IDLE_TIMEOUT,
            min_rate=settings.MIN_TRANSFER_RATE,
            rate_window=settings.TRANSFER_RATE_WINDOW,
            linger_seconds=settings.LINGER_SECONDS,
            linger_bytes=settings.LINGER_BYTES,
            max_connections=settings.MAX_CONNECTIONS,
        )


def _refusal() -> bytes:
    """The 503 for a connection past the cap, written before the app sees a
    request (so built here, as raw HTTP/1.1, from the table's problem)."""
    error = TooManyConnections("The server has as many connections as it takes; retry shortly.")
    status, fields, body = raw_problem(error)
    lines = [f"HTTP/1.1 {status} {status_phrase(status)}"]
    lines += [f"{name.decode('latin-1')}: {value.decode('latin-1')}" for name, value in fields]
    lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class GuardedTCPServer(TCPServer):
    limits: ConnectionLimits | None = None
    on_shutdown_deadline: Any = None  # () -> None, set by install()
    open_connections = 0
    memory = MemoryReturner()
    _watched: set[int] = set()
    _watchers: set[asyncio.Task[None]] = set()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_activity = time.monotonic()
        self._linger_until: float | None = None
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
        finally:
            cls.open_connections -= 1
            cls.memory.connection_closed()

    async def _refuse(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(_refusal())
            async with asyncio.timeout(1):
                await self.writer.drain()
            self.writer.write_eof()
            # What the client already sent is read and dropped briefly, so
            # the close is not a reset that could swallow the 503.
            async with asyncio.timeout(1):
                while await self.reader.read(SOCKET_READ_BYTES):
                    pass
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
                async with asyncio.timeout(self._read_wait()):
                    data = await self.reader.read(SOCKET_READ_BYTES)
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
            await self.writer.drain()  # not paused: returns at once
            return
        limits = self._limits
        while True:
            before = transport.get_write_buffer_size()
            try:
                async with asyncio.timeout(limits.rate_window):
                    await self.writer.drain()
            except TimeoutError:
                moved = before - transport.get_write_buffer_size()
                if moved < limits.min_rate * limits.rate_window:
                    raise TransferTooSlow() from None
                self._last_activity = time.monotonic()
                continue
            self._last_activity = time.monotonic()
            return

    # -- closing -----------------------------------------------------------
    async def _close(self) -> None:
        if self._linger_until is None and self._client_still_sending():
            # Shut our side (the client sees the answer, then the end) and
            # let _read_data drop what is still coming, within bounds.
            self._linger_until = time.monotonic() + self._limits.linger_seconds
            with contextlib.suppress(NotImplementedError, OSError, RuntimeError):
                self.writer.write_eof()
            return
        await super()._close()

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
