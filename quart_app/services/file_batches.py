"""Group commit for single-file uploads.

Each upload held SQLite's single-writer section for several thread hops
(BEGIN IMMEDIATE, the blob lookup, the publish or discard, the flush and the
commit's fsync), each competing with a busy event loop; with many small
uploads that section, not the event loop, capped throughput (README, "Why
the code is shaped this way"). So concurrent single-file creates without an
Idempotency-Key are queued and committed together: one write transaction,
one commit (one fsync) per batch.

The bytes of every file are already sealed (fsynced) before they queue, as
before; publishing and the rows happen inside the batch's transaction, as in
``create_files``. A request is answered only after the batch it rode
committed. A batch commits or fails as a whole (its failures are the
storage's or the database's, not one request's), like a shielded commit: a
client that hangs up does not pull its file out.
"""

from __future__ import annotations

from sqlalchemy import insert

from quart_app.db.engine import Database
from quart_app.db.models import File
from quart_app.services.files import blob_transaction, file_row, new_file
from quart_app.services.group_commit import GroupCommit
from quart_app.services.incoming import IncomingFile, abandon, reservations_of
from quart_app.storage import BlobStore


class FileBatcher(GroupCommit[IncomingFile, File]):
    """One per serving process (state.AppState.file_batcher)."""

    name = "files"

    def __init__(self, database: Database, store: BlobStore) -> None:
        super().__init__(database.commits)
        self._database = database
        self._store = store

    async def create(self, incoming: IncomingFile) -> File:
        """Store one sealed upload as a file with the next batch. From here
        on the batch owns its temp file and its quota reservation: the caller
        must not discard them, even when cancelled (the batch gives them up
        if it fails)."""
        assert incoming.sealed is not None, "create() needs a sealed upload"
        return await self.submit(incoming)

    async def write_batch(self, items: list[IncomingFile], since: float) -> list[File | Exception]:
        try:
            async with blob_transaction(self._database, self._store, since) as (session, changes):
                await changes.keep(session, items)
                files = [new_file(item, None, item.owner_id) for item in items]
                # One bulk INSERT, not the unit of work's flush of every
                # object (the flush was ~7 % of the event loop with 32
                # clients); the objects only carry the answer.
                await session.execute(insert(File), [file_row(file) for file in files])
                for reservation in reservations_of(items):
                    await reservation.release(session)
        except BaseException:
            await abandon(items)
            raise
        return [*files]
