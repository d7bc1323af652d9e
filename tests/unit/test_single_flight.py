"""services/single_flight.py: one read per key at a time, shared by every
caller that asks while it runs."""

from __future__ import annotations

import asyncio

import pytest

from quart_app.services.single_flight import SingleFlight


class Reads:
    """A read that counts its calls and waits until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self) -> int:
        self.calls += 1
        await self.release.wait()
        return self.calls


async def test_callers_of_one_key_share_one_read_and_other_keys_have_their_own() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    first, second = Reads(), Reads()
    waiting = [asyncio.ensure_future(flights.run("a", first)) for _ in range(20)]
    other = asyncio.ensure_future(flights.run("b", second))
    await asyncio.sleep(0)
    first.release.set()
    second.release.set()
    assert await asyncio.gather(*waiting) == [1] * 20
    assert await other == 1
    assert (first.calls, second.calls) == (1, 1)
    # Landed: the next caller reads again.
    assert await flights.run("a", first) == 2


async def test_what_the_read_raises_every_waiter_gets_and_the_next_caller_reads_again() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise ConnectionError("the database went away")

    waiting = [asyncio.ensure_future(flights.run("a", failing)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)
    assert calls == 1
    reads = Reads()
    reads.release.set()
    assert await flights.run("a", reads) == 1


async def test_a_cancelled_caller_stops_waiting_but_not_the_read_of_the_others() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    reads = Reads()
    leaver = asyncio.ensure_future(flights.run("a", reads))
    stayer = asyncio.ensure_future(flights.run("a", reads))
    await asyncio.sleep(0)
    leaver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaver
    reads.release.set()
    assert await stayer == 1
    assert reads.calls == 1


async def test_after_forget_a_caller_starts_its_own_read() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    before, after = Reads(), Reads()
    stale = asyncio.ensure_future(flights.run("a", before))
    await asyncio.sleep(0)
    flights.forget("a")  # what "a" is changed while its read was under way
    fresh = asyncio.ensure_future(flights.run("a", after))
    await asyncio.sleep(0)
    before.release.set()
    after.release.set()
    assert (await stale, await fresh) == (1, 1)
    assert (before.calls, after.calls) == (1, 1)
    # The stale read landing does not drop the fresh one's flight.
    assert not flights._flights
