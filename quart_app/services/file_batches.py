"""Group commit for single-file uploads.

Measured (the note on the benchmark issue): with 32 clients sending 4 KiB
files, each upload held SQLite's single-writer section for ~9.5 ms (BEGIN
IMMEDIATE, the blob lookup, the publish or discard, the flush and the
commit's fsync, each a thread hop competing with a busy event loop), which
capped the server near 100 uploads/s while its event loop was a third idle.
So concurrent single-file creates without an Idempotency-Key are queued and
committed together: one write transaction, one commit (one fsync) per batch.

The bytes of every file are already sealed (fsynced) before they queue, as
before; publishing and the rows happen inside the batch's transaction, as in
``create_files``. A request is answered only after the batch it rode
committed. A batch commits or fails as a whole (its failures are the
storage's or the database's, not one request's), like a shielded commit: a
client that hangs up does not pull its file out.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..db import Database
from ..models import File, utc_now
from ..multipart import IncomingFile
from ..storage import BlobStore
from .files import blob_transaction, new_id

MAX_BATCH = 128


@dataclass
class _Pending:
    incoming: IncomingFile
    future: asyncio.Future[File]


class FileBatcher:
    """One per serving process (``app.extensions["file_batcher"]``)."""

    def __init__(self, database: Database, store: BlobStore) -> None:
        self._database = database
        self._store = store
        self._queue: list[_Pending] = []
        self._drainer: asyncio.Task[None] | None = None

    async def create(self, incoming: IncomingFile) -> File:
        """Store one sealed upload as a file with the next batch."""
        assert incoming.sealed is not None, "create() needs a sealed upload"
        future: asyncio.Future[File] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(incoming, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                files = await self._write([item.incoming for item in batch])
            except BaseException as error:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                if not isinstance(error, Exception):
                    raise
            else:
                for item, file in zip(batch, files, strict=True):
                    item.future.set_result(file)

    async def _write(self, incoming: list[IncomingFile]) -> list[File]:
        async with blob_transaction(self._database, self._store) as (session, changes):
            files = []
            for item in incoming:
                assert item.sealed is not None
                await changes.keep(session, item)
                now = utc_now()
                file = File(
                    id=new_id(),
                    filename=item.filename,
                    content_type=item.content_type,
                    size=item.sealed.size,
                    sha256=item.sealed.sha256,
                    batch_id=None,
                    created_at=now,
                    updated_at=now,
                )
                session.add(file)
                files.append(file)
            await session.flush()
        return files
