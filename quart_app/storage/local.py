"""Local-disk BlobStore.

Layout under the storage root::

    blobs/ab/cd/<sha256>   published blobs, by content address
    tmp/<random>.part      uploads in flight (write-once, O_EXCL)
    trash/<sha256>.<rand>  blobs retired by a transaction not yet committed

Writes are batched (about WRITE_BATCH_BYTES) and each batch is one thread hop
that hashes and writes it; the next batch is received while the previous one
is written, and only one write is in flight per file, so memory per upload
stays about two batches. Every blocking call runs off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

from . import BlobMissing, BlobTooLarge, SealedBlob, StorageFull

READ_CHUNK_BYTES = 1024 * 1024
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(error: OSError) -> Exception:
    if error.errno in _FULL:
        return StorageFull(str(error))
    return error


class LocalBlobWriter:
    def __init__(self, store: LocalBlobStore, max_bytes: int) -> None:
        self._store = store
        self._max_bytes = max_bytes
        self._batch_bytes = store.batch_bytes
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._fd: int | None = None
        self._in_flight: asyncio.Future[None] | None = None
        self.temp_path = store.tmp / f"{secrets.token_hex(16)}.part"
        self.size = 0
        self._sealed: SealedBlob | None = None
        self._published: Path | None = None

    # -- runs in a worker thread -------------------------------------------
    def _write_batch(self, data: bytes | bytearray) -> None:
        if self._fd is None:
            self._fd = os.open(
                self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
        self._hash.update(data)
        view = memoryview(data)
        while view:
            written = self._store.os_write(self._fd, view)
            view = view[written:]

    def _sync_and_close(self) -> None:
        if self._fd is None:
            self._write_batch(b"")
        assert self._fd is not None
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None

    # -- event loop side ---------------------------------------------------
    async def _wait_in_flight(self) -> None:
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            try:
                await in_flight
            except OSError as error:
                raise _storage_error(error) from error

    async def write(self, data: bytes) -> None:
        if self.size + len(data) > self._max_bytes:
            raise BlobTooLarge(self._max_bytes)
        self.size += len(data)
        self._buffer += data
        if len(self._buffer) >= self._batch_bytes:
            await self._wait_in_flight()
            batch, self._buffer = self._buffer, bytearray()
            self._in_flight = asyncio.ensure_future(asyncio.to_thread(self._write_batch, batch))

    async def seal(self) -> SealedBlob:
        await self._wait_in_flight()
        batch, self._buffer = self._buffer, bytearray()
        try:
            await asyncio.to_thread(self._write_batch, batch)
            await asyncio.to_thread(self._sync_and_close)
        except OSError as error:
            raise _storage_error(error) from error
        self._sealed = SealedBlob(self._hash.hexdigest(), self.size)
        return self._sealed

    def _publish(self, target: Path) -> bool:
        made = self._store.make_parents(target)
        if target.exists():
            self.temp_path.unlink()
            return False
        os.rename(self.temp_path, target)
        for directory in {target.parent, *made}:
            _fsync_dir(directory)
        return True

    async def publish(self) -> bool:
        assert self._sealed is not None, "publish() before seal()"
        target = self._store.path_for(self._sealed.sha256)
        try:
            created = await asyncio.to_thread(self._publish, target)
        except OSError as error:
            raise _storage_error(error) from error
        if created:
            self._published = target
        return created

    async def unpublish(self) -> None:
        if self._published is not None:
            published, self._published = self._published, None
            await asyncio.to_thread(published.unlink, True)

    def _discard(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self.temp_path.unlink(missing_ok=True)

    async def discard(self) -> None:
        if self._in_flight is not None:
            with contextlib.suppress(Exception):
                await self._wait_in_flight()
        # Synchronous on purpose: discard runs on error and cancellation
        # paths, where a further await could itself be cancelled.
        self._discard()


class LocalBlobStore:
    def __init__(self, root: Path, batch_bytes: int = 1024 * 1024) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        self.trash = root / "trash"
        self.batch_bytes = batch_bytes

    def prepare(self) -> None:
        for directory in (self.blobs, self.tmp, self.trash):
            directory.mkdir(parents=True, exist_ok=True)

    def os_write(self, fd: int, data: memoryview) -> int:
        """One write(2); a seam so tests can make the disk fill up."""
        return os.write(fd, data)

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 hex digest")
        return self.blobs / sha256[:2] / sha256[2:4] / sha256

    def make_parents(self, target: Path) -> list[Path]:
        """Create the fan-out directories; return the parents of the new ones
        (whose entries must be fsynced)."""
        made = []
        for directory in (target.parent.parent, target.parent):
            if not directory.exists():
                with contextlib.suppress(FileExistsError):
                    directory.mkdir()
                made.append(directory.parent)
        return made

    def writer(self, max_bytes: int) -> LocalBlobWriter:
        return LocalBlobWriter(self, max_bytes)

    async def exists(self, sha256: str) -> bool:
        return await asyncio.to_thread(self.path_for(sha256).exists)

    async def size(self, sha256: str) -> int:
        try:
            return (await asyncio.to_thread(self.path_for(sha256).stat)).st_size
        except FileNotFoundError:
            raise BlobMissing(sha256) from None

    async def read(
        self, sha256: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        try:
            fd = await asyncio.to_thread(os.open, self.path_for(sha256), os.O_RDONLY)
        except FileNotFoundError:
            raise BlobMissing(sha256) from None
        try:
            if end is None:
                end = os.fstat(fd).st_size
            offset = start
            while offset < end:
                chunk = await asyncio.to_thread(
                    os.pread, fd, min(READ_CHUNK_BYTES, end - offset), offset
                )
                if not chunk:
                    return
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    def _retire(self, sha256: str) -> str | None:
        token = f"{sha256}.{secrets.token_hex(8)}"
        try:
            os.rename(self.path_for(sha256), self.trash / token)
        except FileNotFoundError:
            return None
        return token

    async def retire(self, sha256: str) -> str | None:
        return await asyncio.to_thread(self._retire, sha256)

    async def restore(self, token: str) -> None:
        sha256 = token.split(".", 1)[0]
        target = self.path_for(sha256)
        await asyncio.to_thread(self.make_parents, target)
        await asyncio.to_thread(os.rename, self.trash / token, target)

    async def purge(self, token: str) -> None:
        await asyncio.to_thread((self.trash / token).unlink, True)
