"""One read at a time per key, for the per-worker caches (keys, quota
limits): callers asking for a key whose read is under way wait for that
read instead of starting their own.

Without it, every request in flight when a cached entry lapses reads it
again at once: 50 connections on one key meant 50 sessions at the same
moment every KEY_CACHE_SECONDS, past the pool's size (each extra one a new
SQLite connection and thread), and those requests' answers took 100-600 ms
(README "Performance", POST /users p99).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, read: Callable[[], Awaitable[V]]) -> V:
        """``read()``'s result, shared with every caller that asks for
        ``key`` while it runs. It runs as a task of its own: a caller that
        is cancelled (its client hung up) stops waiting, not the read the
        others wait for. What it raises, every waiter gets."""
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(read())
            self._flights[key] = flight
            flight.add_done_callback(partial(self._landed, key))
        return await asyncio.shield(flight)

    def forget(self, key: K) -> None:
        """What ``key`` is has changed here: a read under way may predate
        the change, so callers from now on start their own."""
        self._flights.pop(key, None)

    def _landed(self, key: K, flight: asyncio.Future[V]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved: no "never retrieved" when no one waits
