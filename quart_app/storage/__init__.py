"""Blob storage: the small protocol the service code depends on, and the
maintenance one crash recovery and ``check`` use. Backends: local/ (a
directory) and s3/ (an S3-compatible object store); factory.py picks one.

A blob is immutable bytes addressed by their sha256. Writing goes through a
:class:`BlobWriter`: bytes stream into a temp file while size and sha256 are
computed; ``seal()`` makes them durable (fsync) without publishing them;
``publish()`` moves them to their content address (atomic rename). Service
code publishes inside its database transaction, so a row and its bytes
appear together (see services/files.py).

A small blob (up to the store's ``inline_bytes``) never touches the disk:
``seal()`` hands its bytes back as ``SealedBlob.content`` and the service
stores them in the blob's row, committed (and fsynced) with it; one commit
for a whole group of uploads instead of a file and a directory fsync each
(README, "Why the code is shaped this way").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol


class StorageFull(Exception):
    """The backend has no room left (ENOSPC, EDQUOT)."""


class StorageUnwritable(Exception):
    """The backend cannot take writes now: read-only, no permission, an I/O
    error, its directories gone (EROFS, EACCES, EPERM, EIO, ENOENT, ENOTDIR)."""


class BlobTooLarge(Exception):
    """More bytes were written than the writer's limit allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes")
        self.limit = limit


class BlobMissing(Exception):
    """No blob is stored at that address."""


class PartialBusy(Exception):
    """Another writer still has that resumable upload's bytes open (on disk:
    one whose lease ran out while its process stalled)."""


@dataclass(frozen=True)
class SealedBlob:
    sha256: str
    size: int
    # The bytes themselves, for a blob small enough to live in its database
    # row (nothing was written to disk); None when they are in a temp file.
    content: bytes | None = None


class BytesBlobReader:
    """A blob whose bytes are already in memory (one kept in its row)."""

    def __init__(self, content: bytes) -> None:
        self._content: bytes | None = content
        self.size = len(content)

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        content = self._content
        self.close()
        if content is not None and start < min(end, self.size):
            yield content[start:end]

    def close(self) -> None:
        self._content = None


class BlobReader(Protocol):
    """An open blob. Its bytes stay readable until it is closed, whatever
    happens to its address meanwhile (a replace or delete retiring it), so a
    download that has announced a length can always deliver it."""

    size: int

    def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end), in chunks; the reader closes when they end or
        when the iterator's ``aclose()`` is awaited, started or not."""

    def close(self) -> None:
        """Release the blob. Idempotent."""


class BlobWriter(Protocol):
    size: int

    async def write(self, data: bytes) -> None:
        """Append bytes; raises BlobTooLarge past the limit, StorageFull."""

    async def seal(self) -> SealedBlob:
        """Flush and fsync; the bytes are durable but not yet published. Or,
        for a blob of at most the store's ``inline_bytes``, nothing is on
        disk and its ``content`` must be committed with its row."""

    async def publish(self) -> bool:
        """Move the sealed bytes to their address. False when that address
        already held the same bytes (the temp copy is dropped)."""

    async def unpublish(self) -> None:
        """Undo publish() when the transaction it belonged to failed."""

    async def settle(self) -> None:
        """publish()'s transaction committed: the bytes are no longer in doubt."""

    async def discard(self) -> None:
        """Remove the temp file, if any. Safe to call more than once."""


class BlobStore(Protocol):
    def writer(self, max_bytes: int) -> BlobWriter: ...

    async def stored(self, sha256s: Collection[str]) -> set[str]:
        """Which of these addresses hold bytes (one look for them all)."""

    async def open(self, sha256: str) -> BlobReader:
        """Open a blob for reading. Raises BlobMissing."""

    async def retire(self, sha256: str) -> str | None:
        """Take a blob away from its address (atomic rename to a trash name),
        returning a token for purge() or restore(); None if it was not there."""

    async def restore(self, token: str) -> None: ...

    async def purge(self, token: str) -> None:
        """Delete retired bytes for good. Idempotent."""

    async def probe(self) -> None:
        """Write and remove a few bytes where uploads are written; raises
        StorageUnwritable or StorageFull when that fails (readiness)."""

    def describe(self) -> str:
        """What the store is, for startup lines (no secrets)."""

    async def close(self) -> None:
        """Release connections; the store is not used after."""


class PartialWriter(Protocol):
    offset: int

    async def acquire(self) -> None:
        """Open the partial at ``offset``, bytes past it (never committed)
        cut off. The caller holds the upload's lease, so the committed
        offset is ``offset`` and stays so. BlobMissing if the partial is
        gone; PartialBusy if a writer of this backend still has it open."""

    async def write(self, data: bytes) -> None: ...

    async def flush(self) -> None:
        """All bytes written so far have been hashed and handed to the file."""

    async def make_durable(self) -> int:
        """fsync; the returned offset may be acknowledged."""

    async def roll_back(self) -> None:
        """Cut the partial back to where this writer started."""

    def release(self) -> None: ...


class ResumableStore(BlobStore, Protocol):
    """A BlobStore that also keeps partial uploads under their upload id."""

    async def create_partial(self, upload_id: str) -> None: ...

    def partial_writer(self, upload_id: str, offset: int, hashes: list[Any]) -> PartialWriter: ...

    async def hash_partial(self, upload_id: str, length: int) -> Any: ...

    async def publish_partial(self, upload_id: str, sha256: str, length: int) -> bool:
        """Make the first ``length`` bytes of a complete partial the blob
        ``sha256``; False when identical bytes are already there. What is
        left of the partial is removed by delete_partial after the commit."""

    async def unpublish_partial(self, upload_id: str, sha256: str) -> None: ...

    async def settle_publish(self, sha256: str) -> None:
        """The transaction that published ``sha256`` committed."""

    async def delete_partial(self, upload_id: str) -> None: ...


# Whether a blob row with this sha256 exists (asked inside a write transaction).
HasRow = Callable[[str], Awaitable[bool]]


class MaintainedStore(ResumableStore, Protocol):
    """What crash recovery at startup and ``check`` need from a backend; each
    owns its layout, so each finds its own leftovers and orphans."""

    async def settle_leftovers(self, temp_max_age: float, has_row: HasRow) -> list[str]:
        """Retired blobs back to their address or purged, and blobs published
        without a committed row removed, deciding by ``has_row``."""

    async def remove_abandoned_temps(self, temp_max_age: float) -> list[str]: ...

    async def digest(self, sha256: str) -> tuple[str, int] | None:
        """(sha256, size) of the bytes stored at that address, read back; None if absent."""

    async def blob_names(self) -> set[str]: ...

    async def abandoned_temps(self, temp_max_age: float) -> list[str]: ...

    async def trash_names(self) -> list[str]: ...

    async def stale_partials(self, live: set[str], temp_max_age: float) -> list[str]:
        """Partial uploads that no live upload row names, older than the age."""

    async def partial_intact(self, upload_id: str, length: int) -> bool:
        """Whether the partial holds everything its committed ``length``
        needs (so the upload can go on): the file, long enough; on S3 the
        parts and the tail of that offset."""

    async def remove_blob(self, sha256: str) -> None: ...

    async def remove_partial(self, name: str) -> None: ...
