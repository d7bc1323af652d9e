"""Opening a file's bytes for a download, together with the row they belong to.

A replace or delete retires the old blob inside its transaction and purges it
after the commit, so a row read a moment ago may name bytes that are gone by
the time they are opened. Opening before anything is sent, and reading the
row again (a fresh snapshot) when its bytes have just gone, means a download
either has every byte it will announce or answers an error before any header.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from quart_app.db.engine import Database
from quart_app.db.models import Blob, File
from quart_app.errors import BlobUnavailable
from quart_app.storage import BlobMissing, BlobReader, BlobStore, BytesBlobReader

# Reads of the row, each in a fresh snapshot. More than one is needed only
# when the file changes again between the reads; bytes still missing after
# that are missing for good (the integrity check reports them).
OPEN_ATTEMPTS = 3
log = logging.getLogger("quart_app.storage")

# Reads the file's row in the session it is given; raises when there is none
# for the caller (NotFound for a key, LinkRefused for a download link).
FileFinder = Callable[[AsyncSession], Awaitable[File]]


async def open_content(
    database: Database, store: BlobStore, find: FileFinder, named: str
) -> tuple[File, BlobReader]:
    """The row ``find`` reads and its blob, opened. Raises what ``find``
    raises, or BlobUnavailable when the committed row's bytes cannot be read
    (its detail names the file as ``named``: what the client knows it by)."""
    for _ in range(OPEN_ATTEMPTS):
        # A short session of its own: no read snapshot held while the bytes
        # stream (it would keep SQLite from checkpointing its WAL).
        async with database.sessionmaker() as session:
            file = await find(session)
            # A small blob's bytes are in its row (read in the same snapshot).
            content = await session.scalar(select(Blob.content).where(Blob.sha256 == file.sha256))
        if content is not None:
            return file, BytesBlobReader(content)
        try:
            blob = await store.open(file.sha256)
        except BlobMissing:
            continue
        if blob.size == file.size:
            return file, blob
        blob.close()
        log.error(
            "blob has the wrong size",
            extra={"file_id": file.id, "sha256": file.sha256, "size": blob.size},
        )
        raise BlobUnavailable(f"The content of {named} cannot be read now.")
    log.error("blob missing", extra={"file_id": file.id, "sha256": file.sha256})
    raise BlobUnavailable(f"The content of {named} cannot be read now.")
