"""Request bodies with back-pressure, a byte limit, an idle timeout and a deadline.

Stock Quart (0.22) reads the ASGI receive channel as fast as the client sends
and appends to an unbounded buffer; it checks MAX_CONTENT_LENGTH against the
*buffered* size only (so a streaming consumer is never limited), and has no
idle timeout. Here:

- :class:`BoundedBody` buffers at most ``BODY_BUFFER_BYTES``; past that the
  receive loop (server_internals.BackPressureHTTPConnection) stops calling
  ``receive()``. Hypercorn's own queue to the app holds max_app_queue_size
  messages (hypercorn.toml), so the
  server stops reading the socket and TCP pushes back on the client.
- The byte limit counts every byte received, and is set per endpoint after
  routing (:func:`body_limit`); a declared Content-Length over it is refused
  before any body is read.
- Each wait for data is bounded by the idle timeout and the whole-body
  deadline, and the body must keep up a minimum rate (MIN_TRANSFER_RATE
  bytes a second over each TRANSFER_RATE_WINDOW seconds spent waiting).
- A response that starts before the body has all arrived (an early 412,
  413, 404...) abandons the body: what still arrives is dropped instead of
  buffered (a full buffer would stop the receive loop, and Hypercorn could
  then never hand over the disconnect: the request hung until shutdown),
  and HTTP/1 answers carry ``Connection: close`` (the connection is then
  closed gently: server_internals.GuardedTCPServer).

How it is plugged into Quart and Hypercorn lives in server_internals.py.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Generator
from typing import Any, TypeVar, cast

from quart import Quart, current_app, request

from quart_app.config import Settings
from quart_app.errors import RequestTimeout, ShuttingDown, TooLarge

F = TypeVar("F", bound=Callable[..., Any])
LIMIT_ATTRIBUTE = "_quart_app_body_limit"
# Bodies being received in this process, so that shutdown can end them.
_receiving: weakref.WeakSet[BoundedBody] = weakref.WeakSet()


class ClientDisconnected(Exception):
    """The client went away before the whole body arrived."""


class BoundedBody:
    """A request body with Quart's Body interface (iterate for chunks, await
    for all of it, ``append``/``set_complete`` from the receive loop), but
    our own state: it relies on nothing private of Quart's."""

    def __init__(self, expected_content_length: int | None, max_content_length: int | None) -> None:
        self._data = bytearray()
        self._complete = asyncio.Event()
        self._has_data = asyncio.Event()
        self._must_raise: Exception | None = None
        self.expected_length = expected_content_length
        self.limit: int | None = max_content_length
        self.buffer_bytes = Settings.BODY_BUFFER_BYTES  # until configure()
        self.idle_timeout: float | None = None
        self.deadline: float | None = None
        self.min_rate = 0
        self.rate_window = 0.0
        self.received = 0
        self._whole = False
        self._abandoned = False
        # Seconds spent waiting for data in the current rate window, and the
        # bytes received when it began.
        self._starved = 0.0
        self._window_start_bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        # Raised once the consumer has taken every byte that did arrive.
        self._after_drain: Exception | None = None
        self._disconnect_read = False

    def configure(self, limit: int | None, settings: Settings) -> None:
        """Apply the endpoint's limit and the app's timeouts (after routing)."""
        self.limit = limit
        self.buffer_bytes = settings.BODY_BUFFER_BYTES
        self.idle_timeout = settings.BODY_IDLE_TIMEOUT
        self.deadline = time.monotonic() + settings.BODY_DEADLINE
        self.min_rate = settings.MIN_TRANSFER_RATE
        self.rate_window = settings.TRANSFER_RATE_WINDOW
        if not self._complete.is_set():
            _receiving.add(self)
        if (
            limit is not None and self.expected_length is not None and self.expected_length > limit
        ) or (limit is not None and self.received > limit):
            self._fail(TooLarge(_too_large(limit)))

    def raise_if_failed(self) -> None:
        if self._must_raise is not None:
            raise self._must_raise

    def _fail(self, error: Exception) -> None:
        if self._must_raise is None:
            self._must_raise = error
        self._data.clear()
        self.set_complete()

    def append(self, data: bytes) -> None:
        if not data or self._must_raise is not None:
            return
        self.received += len(data)
        if self._abandoned:
            return
        if self.limit is not None and self.received > self.limit:
            self._fail(TooLarge(_too_large(self.limit)))
            return
        self._data.extend(data)
        self._has_data.set()
        if not self._whole and len(self._data) >= self.buffer_bytes:
            self._room.clear()

    def set_complete(self) -> None:
        self._complete.set()
        self._has_data.set()
        self._room.set()
        _receiving.discard(self)

    def set_result(self, data: bytes) -> None:
        """The whole body at once (Quart's test request contexts use it)."""
        self.append(data)
        self.set_complete()

    def clear(self) -> None:
        self._data.clear()

    def __aiter__(self) -> BoundedBody:
        return self

    @property
    def complete(self) -> bool:
        return self._complete.is_set()

    @property
    def disconnect_unread(self) -> bool:
        """The client went away and the consumer has not read to that point
        yet: bytes that arrived, or the ClientDisconnected after them, are
        still to be read."""
        return self._after_drain is not None and not self._disconnect_read and not self._abandoned

    def abandon(self) -> None:
        """The answer is going out before the body has all arrived: stop
        buffering it and never stop the receive loop again."""
        self._abandoned = True
        self._data.clear()
        self._room.set()
        # A reader that goes on must not mistake the rest for a whole body.
        if self._after_drain is None:
            self._after_drain = ClientDisconnected("the request body was abandoned")
            self._disconnect_read = True  # nobody is owed this one

    def end_for_shutdown(self) -> None:
        if not self._complete.is_set():
            self._fail(shutting_down())

    def set_disconnected(self) -> None:
        # The bytes that arrived before the disconnect stay readable (a tus
        # PATCH keeps them); the error comes after them.
        if not self._complete.is_set() and self._must_raise is None:
            self._after_drain = ClientDisconnected(
                "client disconnected before the body was complete"
            )
            self.set_complete()

    def _raise_disconnected(self) -> None:
        assert self._after_drain is not None
        self._disconnect_read = True
        raise self._after_drain

    async def wait_for_room(self) -> None:
        await self._room.wait()

    async def _wait(self, event: asyncio.Event) -> None:
        # asyncio.timeout, not wait_for: no extra task per wait.
        started = time.monotonic()
        end = started + self.idle_timeout if self.idle_timeout is not None else None
        if self.deadline is not None:
            end = self.deadline if end is None else min(end, self.deadline)
        while True:
            now = time.monotonic()
            timeout = None if end is None else end - now
            if self.min_rate:
                window_left = self.rate_window - self._starved
                timeout = window_left if timeout is None else min(timeout, window_left)
            try:
                async with asyncio.timeout(timeout):
                    await event.wait()
            except TimeoutError:
                pass
            self._starved += time.monotonic() - now
            if not self._rate_held():
                self._fail(
                    RequestTimeout(
                        f"The request body arrived slower than {self.min_rate} bytes a second."
                    )
                )
                return
            if event.is_set():
                return
            if end is not None and time.monotonic() >= end:
                self._fail(RequestTimeout("the request body stalled or took too long"))
                return

    def _rate_held(self) -> bool:
        """Each full window of waiting must have brought min_rate bytes a
        second (time the consumer is busy does not count against the
        client: back-pressure is ours)."""
        if not self.min_rate or self._starved < self.rate_window:
            return True
        held = self.received - self._window_start_bytes >= self.min_rate * self.rate_window
        self._starved = 0.0
        self._window_start_bytes = self.received
        return held

    async def __anext__(self) -> bytes:
        # Chunks of at least a quarter of the buffer (unless the body ends
        # first): a consumer woken for every socket read (often far less
        # than server_internals.SOCKET_READ_BYTES) spends more of the event
        # loop on wake-ups than on the bytes (README, "Why the code is
        # shaped this way").
        while not self._complete.is_set() and len(self._data) < self.buffer_bytes // 4:
            if self._must_raise is not None:
                raise self._must_raise
            self._has_data.clear()
            await self._wait(self._has_data)
        if self._must_raise is not None:
            raise self._must_raise
        if not self._data:
            if self._after_drain is not None:
                self._raise_disconnected()
            raise StopAsyncIteration()
        # Hand over the buffer itself (no copy): a new one gathers the next,
        # and nothing here touches the old one again.
        data, self._data = self._data, bytearray()
        self._has_data.clear()
        self._room.set()
        return cast(bytes, data)

    def __await__(self) -> Generator[Any, None, Any]:
        return self._read_whole().__await__()

    async def _read_whole(self) -> bytes:
        # A caller that wants the whole body (JSON) lifts back-pressure; the
        # endpoint's limit (MAX_JSON_BYTES) then bounds the buffer.
        self._whole = True
        self._room.set()
        while not self._complete.is_set() and self._must_raise is None:
            self._has_data.clear()
            await self._wait(self._has_data)
        if self._must_raise is not None:
            raise self._must_raise
        if self._after_drain is not None:
            self._raise_disconnected()
        return bytes(self._data)


def end_bodies() -> None:
    """Shutdown is about to cancel what is left: end every body still
    arriving with a 503, so its handler answers and cleans up first."""
    for body in list(_receiving):
        body.end_for_shutdown()


BodyLimit = Callable[[Settings], int]


def json_body_limit(settings: Settings) -> int:
    return settings.MAX_JSON_BYTES


def upload_body_limit(settings: Settings) -> int:
    """A stored file may be MAX_UPLOAD_BYTES; multipart framing may add a
    bounded amount. The file itself is held to MAX_UPLOAD_BYTES as it is
    written."""
    return settings.MAX_UPLOAD_BYTES + settings.MAX_MULTIPART_OVERHEAD_BYTES


def body_limit(limit: BodyLimit) -> Callable[[F], F]:
    """Give a view a request body limit other than MAX_JSON_BYTES."""

    def decorator(view: F) -> F:
        setattr(view, LIMIT_ATTRIBUTE, limit)
        return view

    return decorator


def shutting_down() -> ShuttingDown:
    return ShuttingDown("The server is shutting down; send the request again.")


def _too_large(limit: int) -> str:
    return f"The request body is larger than the limit of {limit} bytes."


def init_app(app: Quart, settings: Settings) -> None:
    # Quart's own checks are replaced by BoundedBody's; its whole-body
    # timeout stays as an outer bound for awaited bodies.
    app.config["MAX_CONTENT_LENGTH"] = None
    app.config["BODY_TIMEOUT"] = settings.BODY_DEADLINE
    # Quart cuts a response that takes longer than this to send (60 s by
    # default): a large download to a slow but steady client. Responses are
    # bounded by the connection's idle time and rate floor instead.
    app.config["RESPONSE_TIMEOUT"] = None

    @app.before_request
    async def _apply_body_limit() -> None:
        if request.routing_exception is not None:
            # No view will read this body, so no view's limit applies: a
            # mistyped URL or a wrong method is a 404/405 whatever its size
            # (not a 413 from the JSON limit). Raised here, before any limit
            # is set, exactly as dispatch_request would raise it, so the
            # answer is the usual problem (405 with Allow) and the body is
            # never read; Hypercorn closes the connection after it.
            current_app.raise_routing_exception(request)
        view = current_app.view_functions.get(request.endpoint or "")
        body = request.body
        if isinstance(body, BoundedBody):
            limit: BodyLimit = getattr(view, LIMIT_ATTRIBUTE, json_body_limit)
            body.configure(limit(settings), settings)
            body.raise_if_failed()
