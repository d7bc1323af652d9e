"""Request bodies with back-pressure, a byte limit, an idle timeout and a deadline.

Stock Quart (0.22) reads the ASGI receive channel as fast as the client sends
and appends to an unbounded buffer; it checks MAX_CONTENT_LENGTH against the
*buffered* size only (so a streaming consumer is never limited), and has no
idle timeout. Here:

- :class:`BoundedBody` buffers at most ``BODY_BUFFER_BYTES``; past that the
  receive loop of :class:`BackPressureHTTPConnection` stops calling
  ``receive()``. Hypercorn's own queue to the app holds 10 messages, so the
  server stops reading the socket and TCP pushes back on the client.
- The byte limit counts every byte received, and is set per endpoint after
  routing (:func:`body_limit`); a declared Content-Length over it is refused
  before any body is read.
- Each wait for data is bounded by the idle timeout and the whole-body deadline.

tests/test_streaming.py pins these internals: it fails if a Quart upgrade
changes the receive loop or the Body interface this module replaces.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar, cast

from hypercorn.typing import ASGIReceiveCallable
from quart import Quart, current_app, request
from quart.asgi import ASGIHTTPConnection
from quart.wrappers import Request
from quart.wrappers.request import Body
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout

from .config import Settings

F = TypeVar("F", bound=Callable[..., Any])
LIMIT_ATTRIBUTE = "_quart_app_body_limit"


class ClientDisconnected(Exception):
    """The client went away before the whole body arrived."""


class BoundedBody(Body):
    def __init__(self, expected_content_length: int | None, max_content_length: int | None) -> None:
        super().__init__(expected_content_length, None)
        self.expected_length = expected_content_length
        self.limit: int | None = max_content_length
        self.buffer_bytes = 1024 * 1024
        self.idle_timeout: float | None = None
        self.deadline: float | None = None
        self.received = 0
        self._whole = False
        self._room = asyncio.Event()
        self._room.set()
        # Raised once the consumer has taken every byte that did arrive.
        self._after_drain: Exception | None = None

    def configure(self, limit: int | None, settings: Settings) -> None:
        """Apply the endpoint's limit and the app's timeouts (after routing)."""
        self.limit = limit
        self.buffer_bytes = settings.BODY_BUFFER_BYTES
        self.idle_timeout = settings.BODY_IDLE_TIMEOUT
        self.deadline = time.monotonic() + settings.BODY_DEADLINE
        if (
            limit is not None and self.expected_length is not None and self.expected_length > limit
        ) or (limit is not None and self.received > limit):
            self._fail(RequestEntityTooLarge(_too_large(limit)))

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
        if self.limit is not None and self.received > self.limit:
            self._fail(RequestEntityTooLarge(_too_large(self.limit)))
            return
        self._data.extend(data)
        self._has_data.set()
        if not self._whole and len(self._data) >= self.buffer_bytes:
            self._room.clear()

    def set_complete(self) -> None:
        super().set_complete()
        self._room.set()

    def set_disconnected(self) -> None:
        # The bytes that arrived before the disconnect stay readable (a tus
        # PATCH keeps them); the error comes after them.
        if not self._complete.is_set() and self._must_raise is None:
            self._after_drain = ClientDisconnected(
                "client disconnected before the body was complete"
            )
            self.set_complete()

    async def wait_for_room(self) -> None:
        await self._room.wait()

    async def _wait(self, event: asyncio.Event) -> None:
        # asyncio.timeout, not wait_for: no extra task per wait.
        timeout = self.idle_timeout
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            timeout = remaining if timeout is None else min(timeout, remaining)
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            self._fail(RequestTimeout("the request body stalled or took too long"))

    async def __anext__(self) -> bytes:
        # Chunks of at least a quarter of the buffer (unless the body ends
        # first): a consumer woken for every 64 KiB read spends more of the
        # event loop on wake-ups than on the bytes (measured: PUT used more
        # CPU per GiB than multipart, whose parser let chunks grow).
        while not self._complete.is_set() and len(self._data) < self.buffer_bytes // 4:
            if self._must_raise is not None:
                raise self._must_raise
            self._has_data.clear()
            await self._wait(self._has_data)
        if self._must_raise is not None:
            raise self._must_raise
        if not self._data:
            if self._after_drain is not None:
                raise self._after_drain
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
            raise self._after_drain
        return bytes(self._data)


class BoundedRequest(Request):
    body_class = BoundedBody


class BackPressureHTTPConnection(ASGIHTTPConnection):
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


def _too_large(limit: int) -> str:
    return f"The request body is larger than the limit of {limit} bytes."


# Bytes Hypercorn asks the socket for per read. Its own 64 KiB (a module
# constant, hypercorn.asyncio.tcp_server.MAX_RECV) makes every GiB 16,384
# trips through h11, Hypercorn, Quart and this module; at 256 KiB (asyncio's
# own largest recv) a 1 GiB upload took ~40% less CPU and ran ~1.6x faster
# (measured: the benchmark issue's note). Memory stays bounded: Hypercorn
# queues at most max_app_queue_size reads (hypercorn.toml) while the body
# buffer is full.
SOCKET_READ_BYTES = 256 * 1024


def use_larger_socket_reads() -> None:
    import hypercorn.asyncio.tcp_server as tcp_server

    tcp_server.MAX_RECV = max(tcp_server.MAX_RECV, SOCKET_READ_BYTES)


def init_app(app: Quart, settings: Settings) -> None:
    use_larger_socket_reads()
    app.request_class = BoundedRequest
    app.asgi_http_class = BackPressureHTTPConnection
    # Quart's own checks are replaced by BoundedBody's; its whole-body
    # timeout stays as an outer bound for awaited bodies.
    app.config["MAX_CONTENT_LENGTH"] = None
    app.config["BODY_TIMEOUT"] = settings.BODY_DEADLINE

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
