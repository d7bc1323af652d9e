"""Running a commit to its end even if the client goes away.

Quart cancels a handler when its client disconnects. Cancelled half-way
through a commit, a handler could leave bytes published without their row,
or a row committed while the client never hears of it and the handler
cleans up the bytes. The commit phase runs as its own task instead: a
disconnect cancels only the wait for it, and the task itself ends by
committing or by undoing everything it did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_running: set[asyncio.Task[Any]] = set()


def _forget(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: an orphaned task's error is not "never retrieved"


def start(work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run ``work`` as a task of its own that shutdown waits for
    (wait_running) before the database closes."""
    task = asyncio.ensure_future(work)
    _running.add(task)
    task.add_done_callback(_forget)
    return task


async def run_to_completion(work: Coroutine[Any, Any, T]) -> T:
    return await asyncio.shield(start(work))


def running() -> int:
    """How many commits (and group-commit writers) are running now."""
    return len(_running)


async def wait_running() -> None:
    """Until every commit started so far has ended (at shutdown, before the
    database closes, so none is cut off half-way)."""
    while _running:
        await asyncio.wait(list(_running))
