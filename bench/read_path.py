"""CPU per GiB of a request body's path from the socket to the app, in
process (no socket, no disk): asyncio's StreamReader against
server_internals.WholeReadsStreamReader, and Hypercorn's H11Protocol against
server_internals.HTTP1Protocol, each fed 256 KiB reads one after the other,
round after round.

    python -m bench.read_path              1 GiB, 3 rounds
    python -m bench.read_path --mib 16 --rounds 1

Prints one line per round and path, and the medians as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h11 import H11Protocol

from devtools.socketless import http1_protocol
from quart_app.edge.server_internals import HTTP1Protocol, WholeReadsStreamReader

READ = 256 * 1024
MiB = 1024 * 1024


async def through_reader(reader_class: type[asyncio.StreamReader], total: int) -> float:
    """CPU seconds to feed ``total`` bytes in reads of READ and read them back."""
    reader = reader_class(limit=2**16)  # asyncio.start_server's limit
    read = b"x" * READ
    started = time.process_time()
    for _ in range(total // READ):
        reader.feed_data(read)
        if len(await reader.read(READ)) != READ:
            raise AssertionError("a short read")
    return time.process_time() - started


async def through_protocol(protocol_class: type[H11Protocol], total: int) -> float:
    """CPU seconds for ``total`` bytes of one PUT's body, in reads of READ,
    from the protocol to an ASGI app that takes each message."""
    received = 0

    async def app(scope: Any, receive: Any, send: Any, *_: Any) -> None:
        nonlocal received
        while True:
            message = await receive()
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(event: Event) -> None:
        pass

    async with TaskGroup(asyncio.get_running_loop()) as task_group:
        protocol = http1_protocol(protocol_class, app, task_group, send)
        head = b"PUT /files/a HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % total
        await protocol.handle(RawData(data=head))
        read = b"x" * READ
        started = time.process_time()
        for _ in range(total // READ):
            await protocol.handle(RawData(data=read))
        spent = time.process_time() - started
        await protocol.handle(Closed())
    if received != total:
        raise AssertionError(f"the app received {received} of {total} bytes")
    return spent


PATHS: dict[str, Callable[[int], Coroutine[Any, Any, float]]] = {
    "StreamReader": functools.partial(through_reader, asyncio.StreamReader),
    "WholeReadsStreamReader": functools.partial(through_reader, WholeReadsStreamReader),
    "H11Protocol": functools.partial(through_protocol, H11Protocol),
    "HTTP1Protocol": functools.partial(through_protocol, HTTP1Protocol),
}


def measure(mib: int, rounds: int) -> dict[str, float]:
    """Median CPU seconds per GiB of each path."""
    total = mib * MiB
    figures: dict[str, list[float]] = {name: [] for name in PATHS}
    for round_ in range(rounds):
        for name, path in PATHS.items():
            per_gib = asyncio.run(path(total)) * 1024 / mib
            figures[name].append(per_gib)
            print(f"round {round_ + 1} {name}: {per_gib:.3f} s CPU per GiB", flush=True)
    return {name: round(statistics.median(values), 3) for name, values in figures.items()}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.read_path")
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps({"cpu_s_per_gib": measure(args.mib, args.rounds)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
