"""Opening a file's bytes for a download, together with the row they belong to.

A replace or delete retires the old blob inside its transaction and purges it
after the commit, so a row read a moment ago may name bytes that are gone by
the time they are opened. Opening before anything is sent, and reading the
row again (a fresh snapshot) when its bytes have just gone, means a download
either has every byte it will announce or answers an error before any header.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from quart_app.db.engine import Database
from quart_app.db.models import Blob, File
from quart_app.errors import BlobUnavailable
from quart_app.services.files import get_file
from quart_app.storage import BlobMissing, BlobReader, BlobStore, BytesBlobReader

# Reads of the row, each in a fresh snapshot. More than one is needed only
# when the file changes again between the reads; bytes still missing after
# that are missing for good (the integrity check reports them).
OPEN_ATTEMPTS = 3
log = logging.getLogger("quart_app.storage")


async def open_content(
    database: Database, store: BlobStore, file_id: str
) -> tuple[File, BlobReader]:
    """The file's row and its blob, opened. Raises NotFound, or
    BlobUnavailable when the committed row's bytes cannot be read."""
    for _ in range(OPEN_ATTEMPTS):
        # A short session of its own: no read snapshot held while the bytes
        # stream (it would keep SQLite from checkpointing its WAL).
        async with database.sessionmaker() as session:
            file = await get_file(session, file_id)
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
            extra={"file_id": file_id, "sha256": file.sha256, "size": blob.size},
        )
        raise BlobUnavailable(f"The content of file {file_id} cannot be read now.")
    log.error("blob missing", extra={"file_id": file_id, "sha256": file.sha256})
    raise BlobUnavailable(f"The content of file {file_id} cannot be read now.")
