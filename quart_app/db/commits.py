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


class CommitsInFlight:
    """The commits (and group-commit writers) running in one serving
    process; each Database has one, and shutdown waits for them before the
    database closes (state.AppState.stop)."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an orphaned task's error is not "never retrieved"

    def start(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``work`` as a task of its own that shutdown waits for."""
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(self._forget)
        return task

    async def run_to_completion(self, work: Coroutine[Any, Any, T]) -> T:
        """``work`` runs to its end even if the caller is cancelled (its
        client hung up); only the wait for it is cancelled."""
        return await asyncio.shield(self.start(work))

    @property
    def running(self) -> int:
        """How many are running now."""
        return len(self._running)

    async def wait(self) -> None:
        """Until every one started so far has ended (at shutdown, before the
        database closes, so none is cut off half-way)."""
        while self._running:
            await asyncio.wait(list(self._running))
