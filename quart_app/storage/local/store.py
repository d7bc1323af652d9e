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

from quart_app.storage import BlobMissing, HasRow
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

    def describe(self) -> str:
        return f"storage directory {self.root}"

    async def close(self) -> None:
        """Nothing is held between calls."""

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

    async def publish_partial(self, upload_id: str, sha256: str, length: int) -> bool:
        """Move a complete partial to its content address; False (and the
        partial left in place) when identical bytes are already there. (The
        file holds exactly ``length`` bytes: PartialWriter cut the rest.)"""
        try:
            return await asyncio.to_thread(self._publish_partial, upload_id, sha256)
        except OSError as error:
            raise storage_error(error) from error

    async def unpublish_partial(self, upload_id: str, sha256: str) -> None:
        await asyncio.to_thread(os.rename, self.path_for(sha256), self.partial_path(upload_id))
        await self.settle_publish(sha256)

    async def delete_partial(self, upload_id: str) -> None:
        await asyncio.to_thread(self.partial_path(upload_id).unlink, True)

    # -- crash recovery and check (MaintainedStore) ---------------------------
    async def settle_leftovers(self, temp_max_age: float, has_row: HasRow) -> list[str]:
        from quart_app.storage.local.recovery import settle_leftovers

        return await settle_leftovers(self, temp_max_age, has_row)

    async def remove_abandoned_temps(self, temp_max_age: float) -> list[str]:
        from quart_app.storage.local.recovery import remove_abandoned_temp_files

        return await remove_abandoned_temp_files(self, temp_max_age)

    async def digest(self, sha256: str) -> tuple[str, int] | None:
        path = self.path_for(sha256)
        return await asyncio.to_thread(_digest_of, path) if path.exists() else None

    async def blob_names(self) -> set[str]:
        return await asyncio.to_thread(
            lambda: {p.name for p in self.blobs.rglob("*") if p.is_file()}
        )

    async def abandoned_temps(self, temp_max_age: float) -> list[str]:
        from quart_app.storage.local.recovery import abandoned

        return sorted(p.name for p in self.tmp.iterdir() if abandoned(p, temp_max_age))

    async def trash_names(self) -> list[str]:
        return sorted(p.name for p in self.trash.iterdir())

    async def stale_partials(self, live: set[str], temp_max_age: float) -> list[str]:
        from quart_app.storage.local.recovery import stale

        # Age-gated: a partial file exists a moment before its upload's row.
        return sorted(
            p.name for p in self.partial.iterdir() if p.name not in live and stale(p, temp_max_age)
        )

    async def partial_intact(self, upload_id: str, length: int) -> bool:
        try:
            size = (await asyncio.to_thread(self.partial_path(upload_id).stat)).st_size
        except FileNotFoundError:
            return False
        return size >= length  # bytes past it (never acknowledged) are cut by the next PATCH

    async def remove_blob(self, sha256: str) -> None:
        await asyncio.to_thread(self.path_for(sha256).unlink, True)

    async def remove_partial(self, name: str) -> None:
        await asyncio.to_thread((self.partial / name).unlink, True)


def _digest_of(path: Path) -> tuple[str, int] | None:
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(READ_CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest(), size
