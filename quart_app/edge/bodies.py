"""Request bodies with back-pressure, a byte limit, an idle timeout and a deadline.

Stock Quart (0.22) reads the ASGI receive channel as fast as the client sends
and appends to an unbounded buffer; it checks MAX_CONTENT_LENGTH against the
*buffered* size only (so a streaming consumer is never limited), and has no
idle timeout. Here:

- :class:`BoundedBody` buffers at most ``BODY_BUFFER_BYTES``; past that the
  receive loop of :class:`BackPressureHTTPConnection` stops calling
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
  and HTTP/1 answers carry ``Connection: close`` (connections.py then
  closes gently).
- A handler cancelled before its response started (the graceful timeout
  ran out at shutdown) answers 503 rather than letting Hypercorn send 500.

tests/test_streaming.py pins these internals: it fails if a Quart upgrade
changes the receive loop, the connection's __call__ or the Body interface
this module replaces.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Generator
from typing import Any, TypeVar, cast

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent
from quart import Quart, current_app, request
from quart.asgi import ASGIHTTPConnection
from quart.utils import cancel_tasks, raise_task_exceptions
from quart.wrappers import Request
from quart.wrappers.request import Body

from quart_app.config import Settings
from quart_app.edge import connections
from quart_app.edge.problem_details import raw_problem
from quart_app.errors import RequestTimeout, ShuttingDown, TooLarge

F = TypeVar("F", bound=Callable[..., Any])
LIMIT_ATTRIBUTE = "_quart_app_body_limit"
# Bodies being received in this process, so that shutdown can end them.
_receiving: weakref.WeakSet[BoundedBody] = weakref.WeakSet()


class ClientDisconnected(Exception):
    """The client went away before the whole body arrived."""


class BoundedBody(Body):
    def __init__(self, expected_content_length: int | None, max_content_length: int | None) -> None:
        super().__init__(expected_content_length, None)
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
        super().set_complete()
        self._room.set()
        _receiving.discard(self)

    @property
    def complete(self) -> bool:
        return self._complete.is_set()

    def abandon(self) -> None:
        """The answer is going out before the body has all arrived: stop
        buffering it and never stop the receive loop again."""
        self._abandoned = True
        self._data.clear()
        self._room.set()

    def end_for_shutdown(self) -> None:
        if not self._complete.is_set():
            self._fail(_shutting_down())

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
        except asyncio.CancelledError:
            await cancel_tasks({handler_task, receiver_task})
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
    status, headers, body = raw_problem(_shutting_down())
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
    except Exception:
        pass  # the connection is already gone: nothing to tell


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


def _shutting_down() -> ShuttingDown:
    return ShuttingDown("The server is shutting down; send the request again.")


def _too_large(limit: int) -> str:
    return f"The request body is larger than the limit of {limit} bytes."


def init_app(app: Quart, settings: Settings) -> None:
    connections.install(settings, end_bodies)
    app.request_class = BoundedRequest
    app.asgi_http_class = BackPressureHTTPConnection
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
