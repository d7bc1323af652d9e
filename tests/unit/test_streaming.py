"""Back-pressure, limits and timeouts on BoundedBody itself (the same
through the app: tests/app/test_streaming.py; the Quart internals it is
plugged in with: test_server_internals.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypercorn.typing import HTTPRequestEvent
from quart.wrappers.request import Body

from quart_app.config import load_settings
from quart_app.edge.bodies import BoundedBody, ClientDisconnected
from quart_app.edge.server_internals import BackPressureHTTPConnection
from quart_app.errors import RequestTimeout


class FastClient:
    """An ASGI receive() that always has 64 KiB ready: a client on a fast link."""

    def __init__(self, total: int) -> None:
        self.remaining = total
        self.sent = 0
        self.done = False

    async def receive(self) -> HTTPRequestEvent:
        if self.done:
            await asyncio.Event().wait()  # like a real client: nothing until disconnect
        chunk = min(65536, self.remaining)
        self.remaining -= chunk
        self.sent += chunk
        self.done = self.remaining == 0
        await asyncio.sleep(0)
        return {"type": "http.request", "body": b"x" * chunk, "more_body": not self.done}


async def test_a_fast_client_and_a_slow_consumer_stay_within_the_buffer() -> None:
    settings = load_settings({"BODY_BUFFER_BYTES": 256 * 1024}, environ={})
    body = BoundedBody(None, None)
    body.configure(None, settings)
    client = FastClient(64 * 1024 * 1024)

    class FakeRequest:
        body: BoundedBody

    request = FakeRequest()
    request.body = body
    connection = BackPressureHTTPConnection.__new__(BackPressureHTTPConnection)
    # A stand-in with the one attribute handle_messages uses, not a Request.
    receiver = asyncio.ensure_future(connection.handle_messages(request, client.receive))  # type: ignore[arg-type]
    consumed = 0
    peak_buffered = 0
    async for chunk in body:
        consumed += len(chunk)
        peak_buffered = max(peak_buffered, len(chunk))
        # The unread bytes pulled from the client never exceed the buffer
        # plus one message, however slow this consumer is.
        assert client.sent - consumed <= 256 * 1024 + 65536
        await asyncio.sleep(0.001)  # a slow consumer (disk, say)
    receiver.cancel()
    assert consumed == 64 * 1024 * 1024
    assert peak_buffered <= 256 * 1024 + 65536


async def test_bytes_that_arrived_before_a_disconnect_are_read_then_it_raises() -> None:
    """A tus PATCH keeps what arrived: the disconnect must not drop the bytes
    still in the buffer. Chunks are gathered to a quarter of the buffer."""
    settings = load_settings({"BODY_BUFFER_BYTES": 256 * 1024}, environ={})
    body = BoundedBody(None, None)
    body.configure(None, settings)
    for _ in range(5):
        body.append(b"x" * 1000)
    body.set_disconnected()
    chunks = []
    with pytest.raises(ClientDisconnected):
        async for chunk in body:
            chunks.append(chunk)
    assert [len(c) for c in chunks] == [5000]


async def test_chunks_gather_to_a_quarter_of_the_buffer() -> None:
    settings = load_settings({"BODY_BUFFER_BYTES": 256 * 1024}, environ={})
    body = BoundedBody(None, None)
    body.configure(None, settings)

    async def feed() -> None:
        for _ in range(64):
            body.append(b"y" * 4096)
            await asyncio.sleep(0)
        body.set_complete()

    feeder = asyncio.ensure_future(feed())
    sizes = [len(chunk) async for chunk in body]
    await feeder
    assert sum(sizes) == 64 * 4096
    assert all(size >= 64 * 1024 for size in sizes)


async def test_stock_quart_would_have_buffered_it_all() -> None:
    """The trap this module exists for: Body grows without bound."""
    body = Body(None, None)
    for _ in range(256):
        body.append(b"x" * 65536)
    assert len(body._data) == 16 * 1024 * 1024


async def test_a_body_slower_than_the_rate_floor_is_408(overrides: dict[str, Any]) -> None:
    settings = load_settings({**overrides, "MIN_TRANSFER_RATE": 1000, "TRANSFER_RATE_WINDOW": 0.2})
    body = BoundedBody(None, None)
    body.configure(10_000, settings)

    async def trickle() -> None:
        for _ in range(20):
            body.append(b"x")  # 50 bytes a second, far below 1000
            await asyncio.sleep(0.02)

    feeder = asyncio.ensure_future(trickle())
    with pytest.raises(RequestTimeout, match="slower than 1000 bytes a second"):
        async for _ in body:
            pass
    feeder.cancel()


async def test_time_the_consumer_is_busy_does_not_count_against_the_client(
    overrides: dict[str, Any],
) -> None:
    settings = load_settings(
        {
            **overrides,
            "MIN_TRANSFER_RATE": 1000,
            "TRANSFER_RATE_WINDOW": 0.2,
            "BODY_BUFFER_BYTES": 4,
        }
    )
    body = BoundedBody(None, None)
    body.configure(10_000, settings)
    body.append(b"abcd")
    body.set_complete()
    await asyncio.sleep(0.5)  # the consumer was busy elsewhere
    assert [bytes(chunk) async for chunk in body] == [b"abcd"]


async def test_an_abandoned_body_drops_what_arrives_and_never_blocks(
    overrides: dict[str, Any],
) -> None:
    settings = load_settings({**overrides, "BODY_BUFFER_BYTES": 8})
    body = BoundedBody(None, None)
    body.configure(10_000, settings)
    body.append(b"x" * 16)  # the buffer is full: the receive loop would wait
    body.abandon()
    await asyncio.wait_for(body.wait_for_room(), 0.1)
    body.append(b"y" * 1000)
    assert body.received == 1016
    assert not body.complete
