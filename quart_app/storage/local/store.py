"""Local-disk BlobStore.

Layout under the storage root::

    blobs/ab/cd/<sha256>   published blobs, by content address
    tmp/<pid>-<random>.part  uploads in flight (write-once, O_EXCL)
    partial/<upload id>    resumable (tus) uploads not yet complete
    trash/<sha256>.<rand>  blobs retired by a transaction not yet committed
                           (still readable by a download until purged)

Writers live in writers.py, crash recovery of this layout in recovery.py.
Every blocking call runs off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
from collections.abc import Collection
from pathlib import Path
from typing import Any

from quart_app.storage import BlobMissing
from quart_app.storage.local.disk import READ_CHUNK_BYTES, fsync_dir, storage_error
from quart_app.storage.local.writers import LocalBlobWriter, LocalPartialWriter


class LocalBlobReader:
    """An open blob file. The descriptor keeps the bytes readable after a
    replace or delete renames and unlinks the file, so a download opened
    before it delivers every byte it announced. Reads run off the event loop.

    Closed when its chunks end, when their ``aclose()`` is awaited (Quart
    does that for a response body, sent or not), on ``close()``, and as a
    last resort when it is collected: a response built and then dropped
    (HEAD, a client gone before the headers) must not leak a descriptor."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = None
        self.size = os.fstat(fd).st_size
        self._fd = fd
        self._offset = 0
        self._end = 0

    def chunks(self, start: int, end: int) -> LocalBlobReader:
        self._offset, self._end = start, min(end, self.size)
        return self

    def __aiter__(self) -> LocalBlobReader:
        return self

    async def __anext__(self) -> bytes:
        fd = self._fd
        if fd is None or self._offset >= self._end:
            self.close()
            raise StopAsyncIteration
        try:
            chunk = await asyncio.to_thread(
                os.pread, fd, min(READ_CHUNK_BYTES, self._end - self._offset), self._offset
            )
        except BaseException:
            self.close()
            raise
        if not chunk:  # cannot happen to an immutable blob; never loop on it
            self.close()
            raise StopAsyncIteration
        self._offset += len(chunk)
        return chunk

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __del__(self) -> None:
        self.close()


class LocalBlobStore:
    def __init__(self, root: Path, batch_bytes: int, inline_bytes: int = 0) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        self.trash = root / "trash"
        self.partial = root / "partial"
        self.batch_bytes = batch_bytes
        # Blobs up to this size are sealed in memory, for their database row
        # (storage/__init__.py); never more than one write batch.
        self.inline_bytes = min(inline_bytes, batch_bytes)

    def prepare(self) -> None:
        for directory in (self.root, self.blobs, self.tmp, self.trash, self.partial):
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

    # A blob renamed into place before its transaction commits is in doubt
    # until the commit: a marker names it, so that if the process dies in
    # between, startup (ops/integrity.recover, recovery.py) can tell those
    # bytes have no row without scanning every blob.
    def publish_marker(self, sha256: str) -> Path:
        return self.tmp / f"{os.getpid()}-publishing-{sha256}"

    def mark_publishing(self, sha256: str) -> None:
        os.close(os.open(self.publish_marker(sha256), os.O_WRONLY | os.O_CREAT, 0o600))

    async def settle_publish(self, sha256: str) -> None:
        await asyncio.to_thread(self.publish_marker(sha256).unlink, True)

    def writer(self, max_bytes: int) -> LocalBlobWriter:
        return LocalBlobWriter(self, max_bytes)

    async def stored(self, sha256s: Collection[str]) -> set[str]:
        paths = {sha256: self.path_for(sha256) for sha256 in sha256s}
        return await asyncio.to_thread(lambda: {sha for sha, p in paths.items() if p.exists()})

    def _open(self, sha256: str) -> LocalBlobReader:
        try:
            fd = os.open(self.path_for(sha256), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = self._open_retired(sha256)
        try:
            return LocalBlobReader(fd)
        except BaseException:
            os.close(fd)
            raise

    def _open_retired(self, sha256: str) -> int:
        """A blob that a replace or delete has just retired, before it is
        purged: the bytes of a row that was committed a moment ago (the
        transaction that retired them has not committed yet, or has only
        just). Serving them keeps a download consistent with the row it read."""
        for name in os.listdir(self.trash):
            if name.startswith(sha256 + "."):
                with contextlib.suppress(FileNotFoundError):  # purged meanwhile
                    return os.open(self.trash / name, os.O_RDONLY | os.O_CLOEXEC)
        raise BlobMissing(sha256)

    async def open(self, sha256: str) -> LocalBlobReader:
        return await asyncio.to_thread(self._open, sha256)

    def _retire(self, sha256: str) -> str | None:
        token = f"{sha256}.{secrets.token_hex(8)}"
        try:
            os.rename(self.path_for(sha256), self.trash / token)
        except FileNotFoundError:
            return None
        return token

    async def retire(self, sha256: str) -> str | None:
        try:
            return await asyncio.to_thread(self._retire, sha256)
        except OSError as error:
            raise storage_error(error) from error

    async def restore(self, token: str) -> None:
        sha256 = token.split(".", 1)[0]
        target = self.path_for(sha256)
        await asyncio.to_thread(self.make_parents, target)
        await asyncio.to_thread(os.rename, self.trash / token, target)

    async def purge(self, token: str) -> None:
        await asyncio.to_thread((self.trash / token).unlink, True)

    def _probe(self) -> None:
        # Named like an upload's temp file, so that startup removes it if the
        # process dies between the two calls.
        path = self.tmp / f"{os.getpid()}-probe-{secrets.token_hex(8)}.part"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            path.unlink()

    async def probe(self) -> None:
        try:
            await asyncio.to_thread(self._probe)
        except OSError as error:
            raise storage_error(error) from error

    # -- resumable uploads (ResumableStore) --------------------------------
    def partial_path(self, upload_id: str) -> Path:
        if not upload_id.replace("-", "").replace("_", "").isalnum():
            raise ValueError("not an upload id")
        return self.partial / upload_id

    def _create_partial(self, upload_id: str) -> None:
        fd = os.open(self.partial_path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fsync(fd)
        os.close(fd)
        fsync_dir(self.partial)

    async def create_partial(self, upload_id: str) -> None:
        try:
            await asyncio.to_thread(self._create_partial, upload_id)
        except OSError as error:
            raise storage_error(error) from error

    def partial_writer(self, upload_id: str, offset: int, hashes: list[Any]) -> LocalPartialWriter:
        return LocalPartialWriter(self, self.partial_path(upload_id), offset, hashes)

    def _hash_partial(self, upload_id: str, length: int) -> Any:
        digest = hashlib.sha256()
        with self.partial_path(upload_id).open("rb") as handle:
            remaining = length
            while remaining:
                chunk = handle.read(min(READ_CHUNK_BYTES, remaining))
                if not chunk:
                    raise BlobMissing(f"{upload_id} is shorter than {length} bytes")
                digest.update(chunk)
                remaining -= len(chunk)
        return digest

    async def hash_partial(self, upload_id: str, length: int) -> Any:
        """sha256 state over the first ``length`` bytes (after a restart).
        Raises BlobMissing when the partial file is gone."""
        try:
            return await asyncio.to_thread(self._hash_partial, upload_id, length)
        except FileNotFoundError:
            raise BlobMissing(upload_id) from None

    def _publish_partial(self, upload_id: str, sha256: str) -> bool:
        target = self.path_for(sha256)
        made = self.make_parents(target)
        if target.exists():
            return False
        self.mark_publishing(sha256)
        os.rename(self.partial_path(upload_id), target)
        for directory in {target.parent, self.partial, *made}:
            fsync_dir(directory)
        return True

    async def publish_partial(self, upload_id: str, sha256: str) -> bool:
        """Move a complete partial to its content address; False (and the
        partial left in place) when identical bytes are already there."""
        try:
            return await asyncio.to_thread(self._publish_partial, upload_id, sha256)
        except OSError as error:
            raise storage_error(error) from error

    async def unpublish_partial(self, upload_id: str, sha256: str) -> None:
        await asyncio.to_thread(os.rename, self.path_for(sha256), self.partial_path(upload_id))
        await self.settle_publish(sha256)

    async def delete_partial(self, upload_id: str) -> None:
        await asyncio.to_thread(self.partial_path(upload_id).unlink, True)
