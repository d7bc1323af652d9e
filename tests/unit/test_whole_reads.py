"""server_internals.WholeReadsStreamReader against asyncio's own StreamReader:
the same bytes, ends, errors and transport pauses for any order of socket
reads and consumer calls, with a read handed on uncopied where it can be."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypercorn.config import Config

from quart_app.edge.server_internals import GuardedTCPServer, WholeReadsStreamReader


class Transport(asyncio.ReadTransport):
    """Records what the reader asks of the socket."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


async def outcome(
    reader: asyncio.StreamReader, step: str, argument: Any, feed: bytes | None = None
) -> Any:
    """What one consumer call gives; "blocked" if it would wait for more.
    ``feed``: a socket read arriving while the call waits."""
    calls: dict[str, Callable[..., Awaitable[bytes]]] = {
        "read": reader.read,
        "line": reader.readline,
        "exactly": reader.readexactly,
    }
    task = asyncio.ensure_future(calls[step](*([] if argument is None else [argument])))
    for _ in range(5):
        await asyncio.sleep(0)
    if feed is not None:
        reader.feed_data(feed)
        for _ in range(5):
            await asyncio.sleep(0)
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return "blocked"
    error = task.exception()
    return type(error).__name__ if error is not None else task.result()


async def replay(reader: asyncio.StreamReader, script: list[tuple[str, Any]]) -> list[Any]:
    """Run the script against the reader: what each step gave, and the
    transport's pauses and resumes."""
    transport = Transport()
    reader.set_transport(transport)
    outcomes: list[Any] = []
    for step, argument in script:
        if step == "feed":
            reader.feed_data(argument)
        elif step == "eof":
            reader.feed_eof()
        elif step == "error":
            reader.set_exception(ConnectionResetError("gone"))
        elif step == "feed while waiting":
            call, call_argument, data = argument
            outcomes.append(await outcome(reader, call, call_argument, feed=data))
        else:
            outcomes.append(await outcome(reader, step, argument))
        outcomes.append(("at_eof", reader.at_eof()))
    outcomes.append(transport.calls)
    return outcomes


def random_script(seed: int) -> list[tuple[str, Any]]:
    rng = random.Random(seed)
    script: list[tuple[str, Any]] = []
    for _ in range(rng.randint(1, 30)):
        kind = rng.choice(["feed", "feed", "feed", "read", "read", "line", "exactly", "waiting"])
        if kind == "feed":
            size = rng.choice([1, 10, 1000, 70_000, 200_000, 300_000])
            data = bytes(rng.choice(b"ab\n") for _ in range(min(size, 50)))
            script.append(("feed", data * (size // len(data) or 1)))
        elif kind == "read":
            script.append(("read", rng.choice([1, 100, 65_536, 262_144, 1_000_000, -1])))
        elif kind == "line":
            script.append(("line", None))
        elif kind == "waiting":
            call = rng.choice([("read", 262_144), ("read", 3), ("line", None), ("exactly", 5)])
            data = rng.choice([b"abc\nxyz", b"ab", b"x" * 200_000])
            script.append(("feed while waiting", (*call, data)))
        else:
            script.append(("exactly", rng.choice([1, 1000, 100_000])))
    script.append(rng.choice([("eof", None), ("error", None), ("read", 10)]))
    script.append(("read", 1_000_000))
    return script


@pytest.mark.parametrize("seed", range(200))
async def test_any_order_of_reads_and_calls_gives_what_stream_reader_gives(seed: int) -> None:
    script = random_script(seed)
    stock = await replay(asyncio.StreamReader(limit=2**16), script)
    ours = await replay(WholeReadsStreamReader(limit=2**16), script)
    assert ours == stock


async def test_a_read_the_consumer_can_take_whole_is_handed_on_uncopied() -> None:
    reader = WholeReadsStreamReader(limit=2**16)
    transport = Transport()
    reader.set_transport(transport)
    first, second = b"a" * 262_144, b"b" * 1000
    reader.feed_data(first)
    assert transport.calls == ["pause"]  # past 2 x limit, as StreamReader
    assert await reader.read(262_144) is first
    assert transport.calls == ["pause", "resume"]
    waiting = asyncio.ensure_future(reader.read(262_144))
    await asyncio.sleep(0)
    reader.feed_data(second)
    assert await waiting is second
    # Two reads before the consumer came: StreamReader's own path, joined.
    reader.feed_data(b"cd")
    reader.feed_data(b"ef")
    assert await reader.read(262_144) == b"cdef"
    # A read larger than asked for: the rest stays for the next call.
    reader.feed_data(b"ghij")
    assert await reader.read(3) == b"ghi"
    assert await reader.read(3) == b"j"
    reader.feed_data(b"kl")
    reader.feed_eof()
    assert not reader.at_eof()
    assert await reader.read(10) == b"kl"
    assert reader.at_eof()
    assert await reader.read(10) == b""


async def test_each_connection_reads_through_it() -> None:
    """GuardedTCPServer swaps the reader asyncio.start_server made."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    server = GuardedTCPServer(None, loop, Config(), None, None, reader, None)
    assert type(server.reader) is WholeReadsStreamReader
    reader.feed_data(b"xyz")
    assert await server.reader.read(10) == b"xyz"
