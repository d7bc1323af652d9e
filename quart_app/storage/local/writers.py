"""Writers of the local backend: a new blob into a temp file, and a resumable
upload appended to its partial file.

Writes are batched (about WRITE_BATCH_BYTES) and each batch is one thread hop
that hashes and writes it; the next batch is received while the previous one
is written, and only one write is in flight per file, so memory per upload
stays about two batches. Every blocking call runs off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quart_app.storage import (
    BlobMissing,
    BlobTooLarge,
    PartialBusy,
    SealedBlob,
)
from quart_app.storage.local.disk import fsync_dir, start_writeback, storage_error

if TYPE_CHECKING:
    from quart_app.storage.local.store import LocalBlobStore


class BatchedWriter:
    """Appends to a file in batches of about ``batch_bytes``, one thread hop
    per batch that feeds ``hashes`` and writes; one batch in flight at a time
    while the next is gathered."""

    def __init__(self, store: LocalBlobStore, hashes: list[Any]) -> None:
        self._store = store
        self._batch_bytes = store.batch_bytes
        self._chunks: list[bytes] = []
        self._gathered = 0
        self._hashes = hashes
        self._fd: int | None = None
        self._in_flight: asyncio.Future[None] | None = None

    def _open(self) -> int:
        raise NotImplementedError

    # -- runs in a worker thread -------------------------------------------
    def _write_batch(self, chunks: list[bytes], fsync_follows: bool = False) -> None:
        if self._fd is None:
            self._fd = self._open()
        # Joined here, off the event loop: the loop only appends references.
        # (An empty batch still opens the file.)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        for digest in self._hashes:
            digest.update(data)
        # Where this batch starts, for the writeback hint (an fsync follows
        # the last batch, which needs none).
        start = None if fsync_follows or not data else os.lseek(self._fd, 0, os.SEEK_CUR)
        view = memoryview(data)
        while view:
            written = self._store.os_write(self._fd, view)
            view = view[written:]
        if start is not None:
            start_writeback(self._fd, start, len(data))

    def _write_and_fsync(self, chunks: list[bytes], close: bool) -> None:
        self._write_batch(chunks, fsync_follows=True)  # opens the file if need be
        assert self._fd is not None
        os.fsync(self._fd)
        if close:
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    # -- event loop side ---------------------------------------------------
    async def _wait_in_flight(self) -> None:
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            try:
                await in_flight
            except OSError as error:
                raise storage_error(error) from error

    def _take_batch(self) -> list[bytes]:
        batch, self._chunks, self._gathered = self._chunks, [], 0
        return batch

    async def _append(self, data: bytes) -> None:
        """``data`` is kept by reference: the caller must not change it."""
        self._chunks.append(data)
        self._gathered += len(data)
        if self._gathered >= self._batch_bytes:
            await self._wait_in_flight()
            batch = self._take_batch()
            self._in_flight = asyncio.ensure_future(asyncio.to_thread(self._write_batch, batch))

    async def flush(self) -> None:
        """Everything written so far has passed through the hashes and
        reached the file (not yet fsynced)."""
        await self._wait_in_flight()
        batch = self._take_batch()
        try:
            await asyncio.to_thread(self._write_batch, batch)
        except OSError as error:
            raise storage_error(error) from error

    async def _flush_and_fsync(self, close: bool = False) -> None:
        """flush() and fsync (and close, if asked) in one thread hop."""
        await self._wait_in_flight()
        try:
            await asyncio.to_thread(self._write_and_fsync, self._take_batch(), close)
        except OSError as error:
            raise storage_error(error) from error

    async def _settle(self) -> None:
        """Let a batch in flight land (its error no longer matters)."""
        self._take_batch()
        if self._in_flight is not None:
            with contextlib.suppress(Exception):
                await self._wait_in_flight()


class LocalBlobWriter(BatchedWriter):
    def __init__(self, store: LocalBlobStore, max_bytes: int) -> None:
        self._hash = hashlib.sha256()
        super().__init__(store, [self._hash])
        self._max_bytes = max_bytes
        # The pid names the owner: after a crash, startup removes temp files
        # whose process is gone (ops/integrity.recover, recovery.py).
        self.temp_path = store.tmp / f"{os.getpid()}-{secrets.token_hex(16)}.part"
        self.size = 0
        self._sealed: SealedBlob | None = None
        self._published: Path | None = None
        self._temp_file_made = False

    def _open(self) -> int:
        self._temp_file_made = True  # before: discard() must look even if this fails
        return os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    async def write(self, data: bytes) -> None:
        if self.size + len(data) > self._max_bytes:
            raise BlobTooLarge(self._max_bytes)
        self.size += len(data)
        await self._append(data)

    async def seal(self) -> SealedBlob:
        inline = self._store.inline_bytes
        if inline and self.size <= inline and self._fd is None and self._in_flight is None:
            # Small and nothing written yet: the bytes go to the blob's row
            # (storage/__init__.py). Hashing a few KiB here costs less than
            # the thread hop it saves.
            content = b"".join(self._take_batch())
            self._hash.update(content)
            self._sealed = SealedBlob(self._hash.hexdigest(), self.size, content)
            return self._sealed
        await self._flush_and_fsync(close=True)
        self._sealed = SealedBlob(self._hash.hexdigest(), self.size)
        return self._sealed

    def _publish(self, target: Path) -> bool:
        made = self._store.make_parents(target)
        if target.exists():
            self.temp_path.unlink()
            return False
        self._store.mark_publishing(target.name)
        os.rename(self.temp_path, target)
        for directory in {target.parent, *made}:
            fsync_dir(directory)
        return True

    async def publish(self) -> bool:
        assert self._sealed is not None, "publish() before seal()"
        assert self._sealed.content is None, "a blob kept in its row has no file to publish"
        target = self._store.path_for(self._sealed.sha256)
        try:
            created = await asyncio.to_thread(self._publish, target)
        except OSError as error:
            raise storage_error(error) from error
        if created:
            self._published = target
        return created

    async def unpublish(self) -> None:
        if self._published is not None:
            published, self._published = self._published, None
            await asyncio.to_thread(published.unlink, True)
            await self._store.settle_publish(published.name)

    async def settle(self) -> None:
        """The row committed: the bytes are no longer in doubt."""
        if self._published is not None:
            await self._store.settle_publish(self._published.name)

    async def discard(self) -> None:
        await self._settle()
        # Synchronous from here on: discard runs on error and cancellation
        # paths, where a further await could itself be cancelled.
        with contextlib.suppress(OSError):
            self._close()
        # On a read-only mount even removing a file that is not there fails;
        # a temp file that cannot go now is removed at the next startup.
        if self._temp_file_made:
            with contextlib.suppress(OSError):
                self.temp_path.unlink(missing_ok=True)


class LocalPartialWriter(BatchedWriter):
    """Appends to a resumable upload's partial file at ``offset``. Bytes past
    ``offset`` that were never acknowledged (a crash between write and
    commit) are cut off first.

    Who writes is decided by the upload's lease in the database. The file
    is also held with an exclusive flock (released when the fd closes, or
    the process dies): a PATCH whose lease ran out while its process was
    stalled still has the file open and would write into the bytes of the
    request that took the upload over; the flock makes that one a 423."""

    def __init__(self, store: LocalBlobStore, path: Path, offset: int, hashes: list[Any]) -> None:
        super().__init__(store, hashes)
        self.path = path
        self.start = offset
        self.offset = offset

    def _lock(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PartialBusy(self.path.name) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _trim(self) -> None:
        # Bytes past the committed offset were never acknowledged (a PATCH
        # cut off before its commit): they go.
        assert self._fd is not None
        os.ftruncate(self._fd, self.start)
        os.lseek(self._fd, self.start, os.SEEK_SET)

    async def acquire(self) -> None:
        """Raises PartialBusy when another writer has the file open,
        BlobMissing when the partial file is gone."""
        try:
            await asyncio.to_thread(self._lock)
        except FileNotFoundError:
            raise BlobMissing(self.path.name) from None
        except OSError as error:
            raise storage_error(error) from error
        try:
            await asyncio.to_thread(self._trim)
        except OSError as error:
            self.release()
            raise storage_error(error) from error
        except BaseException:
            self.release()
            raise

    def _open(self) -> int:
        raise AssertionError("acquire() opens the partial file")

    async def write(self, data: bytes) -> None:
        self.offset += len(data)
        await self._append(data)

    async def make_durable(self) -> int:
        """Flush and fsync; returns the offset now safe to acknowledge."""
        await self._flush_and_fsync()
        return self.offset

    async def roll_back(self) -> None:
        """Cut the file back to where this writer started."""
        await self._settle()
        if self._fd is not None:
            fd = self._fd
            await asyncio.to_thread(os.ftruncate, fd, self.start)
            await asyncio.to_thread(os.fsync, fd)
        self.offset = self.start

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self._close()
