"""Group commit: concurrent requests queue their work, one task writes it in
batches (one transaction, one fsync each), and every request gets its own
result, only after the batch it rode has committed.

A client that hangs up does not pull its work out of a batch: once
submitted, an item belongs to the batch, which commits or fails as a whole,
like a shielded commit. A batch that raises fails every request in it. The
writing task is started like one too (CommitsInFlight.start), so shutdown
waits for the batch in flight before the database closes.

A batch is given the time its oldest request queued: its wait for the
database counts from then, so a request queued behind a batch that waited
in vain (the database locked by another process) does not wait twice.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

from quart_app import metrics
from quart_app.db.commits import CommitsInFlight

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    max_batch = 128
    # The batcher label of quart_app_group_commit_batch_size.
    name = "group_commit"

    def __init__(self, commits: CommitsInFlight) -> None:
        self._commits = commits
        self._queue: list[tuple[Item, asyncio.Future[Result], float]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.pending = 0  # submitted items whose batch has not ended

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._queue.append((item, future, loop.time()))
        if self._drainer is None or self._drainer.done():
            self._drainer = self._commits.start(self._drain())
        self.pending += 1
        future.add_done_callback(self._ended)
        return await asyncio.shield(future)

    def _ended(self, future: asyncio.Future[Result]) -> None:
        self.pending -= 1
        if not future.cancelled():
            future.exception()  # retrieved: its request may have hung up

    async def write_batch(self, items: list[Item], since: float) -> list[Result | Exception]:
        """Write the items in one transaction: a result, or the exception
        that item's request should raise, for each. ``since`` is the loop
        time the oldest of them queued (see Database.writing)."""
        raise NotImplementedError

    async def _drain(self) -> None:
        while self._queue:
            batch = self._queue[: self.max_batch]
            self._queue = self._queue[self.max_batch :]
            metrics.group_commit_batch(self.name, len(batch))
            try:
                results = await self.write_batch([item for item, _, _ in batch], batch[0][2])
            except BaseException as error:
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(error, Exception):
                    raise
                continue
            for (_, future, _), result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
