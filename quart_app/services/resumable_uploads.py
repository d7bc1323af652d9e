"""Resumable uploads: create, append, complete, terminate, expire.

Durability: a PATCH's bytes are fsynced before the new offset is committed,
so the offset only ever covers bytes on disk. A crash between the two leaves
bytes past the offset; the next PATCH cuts them off (PartialWriter). One
writer at a time per upload, across processes (the partial file's flock).

The sha256 of the whole upload is computed as bytes stream in, across
PATCHes: each process keeps the hash state of the uploads it served
(HashStates); after a restart, or when another worker took the previous
PATCH, the state is rebuilt by reading the partial file once.

Quotas (services/quotas.py): an unfinished upload holds its Upload-Length
and one file in its owner's quota, checked when it is created; while the
length is deferred it holds the bytes it has received, checked when each
PATCH commits its offset, and its length when a PATCH sets it, checked
before that PATCH's body is read.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from quart_app import metrics
from quart_app.db.engine import Database
from quart_app.db.models import File, Upload, utc_now
from quart_app.errors import (
    ChecksumMismatch,
    Conflict,
    Gone,
    InvalidInput,
    NotFound,
    OffsetMismatch,
    QuotaExceeded,
    TooLarge,
    UploadLocked,
)
from quart_app.services.accounts import Access
from quart_app.services.files import BlobChanges, blob_transaction, file_lock, new_id
from quart_app.services.quotas import Quotas, bytes_exceeded
from quart_app.storage import (
    BlobMissing,
    PartialBusy,
    PartialMoved,
    PartialWriter,
    ResumableStore,
)

# The checksums a PATCH may carry (tus checksum extension), by name.
CHECKSUM_ALGORITHMS: dict[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "md5": hashlib.md5,
}


class HashStates:
    """sha256 states of uploads in progress, by (id, offset); bounded LRU."""

    def __init__(self, capacity: int) -> None:
        self._states: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self._capacity = capacity

    def take(self, upload_id: str, offset: int) -> Any | None:
        entry = self._states.pop(upload_id, None)
        return entry[1] if entry is not None and entry[0] == offset else None

    def put(self, upload_id: str, offset: int, state: Any) -> None:
        self._states[upload_id] = (offset, state)
        self._states.move_to_end(upload_id)
        while len(self._states) > self._capacity:
            self._states.popitem(last=False)


UploadHook = Callable[[AsyncSession, Upload], Awaitable[None]]


@dataclass(frozen=True)
class UploadSpec:
    length: int | None
    metadata_header: str | None
    filename: str
    content_type: str


@dataclass(frozen=True)
class Patch:
    offset: int
    checksum: tuple[str, bytes] | None
    new_length: int | None
    max_length: int
    expires_in: timedelta


def _check_live(
    upload: Upload | None, upload_id: str, now: datetime, access: Access | None = None
) -> Upload:
    # Another owner's upload is absent, expired or not (no existence leak).
    if upload is None or (access is not None and not access.owns(upload.owner_id)):
        raise NotFound("There is no such upload.")
    if upload.expires_at <= now:
        raise Gone(f"The upload {upload_id} expired at {upload.expires_at.isoformat()}.")
    return upload


async def get_upload(session: AsyncSession, upload_id: str, access: Access | None = None) -> Upload:
    """The live upload; with ``access``, only if it reaches it (None: the
    caller has already checked)."""
    return _check_live(await session.get(Upload, upload_id), upload_id, utc_now(), access)


async def _complete(
    session: AsyncSession, changes: BlobChanges, store: ResumableStore, upload: Upload, sha: str
) -> None:
    """The partial becomes a blob, and the file with the upload's id appears."""
    await changes.database.lock(session, [file_lock(upload.id)])  # a PUT of that id
    taken = select(File.id).where(File.id == upload.id, File.owner_id == upload.owner_id)
    if await session.scalar(taken) is not None:
        raise Conflict(f"A file {upload.id} already exists; the upload cannot complete.")
    upload_id = upload.id
    has_row, stored = await changes.blob_is_stored(session, sha)
    if not stored and await store.publish_partial(upload_id, sha, upload.offset):
        changes.on_undo(lambda: store.unpublish_partial(upload_id, sha), publish=True)
        changes.after_commit(lambda: store.settle_publish(sha))
    # Whether the partial became the blob (a rename on disk) or was copied
    # into it (S3) or was not needed, what is left of it goes.
    changes.after_commit(lambda: store.delete_partial(upload_id))
    if not has_row:
        await changes.add_blob_row(session, sha, upload.offset)
    now = utc_now()
    session.add(
        File(
            id=upload_id,
            owner_id=upload.owner_id,
            filename=upload.filename,
            content_type=upload.content_type,
            size=upload.offset,
            sha256=sha,
            created_at=now,
            updated_at=now,
        )
    )
    upload.completed_at = now
    upload.sha256 = sha


async def create_upload(
    database: Database,
    store: ResumableStore,
    quotas: Quotas,
    owner_id: int,
    spec: UploadSpec,
    expires_in: timedelta,
    before_commit: UploadHook | None = None,
) -> Upload:
    """``before_commit`` runs inside the creating transaction, which also
    takes the upload's room in the owner's quota (QuotaExceeded)."""
    upload_id = new_id()
    await store.create_partial(upload_id)
    try:
        async with blob_transaction(database, store) as (session, changes):
            await quotas.check_room(session, owner_id, spec.length or 0, 1)
            now = utc_now()
            upload = Upload(
                id=upload_id,
                owner_id=owner_id,
                length=spec.length,
                offset=0,
                upload_metadata=spec.metadata_header,
                filename=spec.filename,
                content_type=spec.content_type,
                created_at=now,
                expires_at=now + expires_in,
            )
            session.add(upload)
            await session.flush()
            if spec.length == 0:
                await _complete(session, changes, store, upload, hashlib.sha256().hexdigest())
            if before_commit is not None:
                await before_commit(session, upload)
    except BaseException:
        await store.delete_partial(upload_id)
        raise
    metrics.resumable_upload_created()
    if upload.completed_at is not None:
        metrics.resumable_upload_finished()
    return upload


async def _record(
    database: Database,
    store: ResumableStore,
    hashes: HashStates,
    writer: PartialWriter,
    upload_id: str,
    state: Any,
    patch: Patch,
    before_commit: UploadHook | None,
    quotas: Quotas | None = None,
) -> Upload:
    """fsync what arrived, then move the offset over it (and complete the
    upload when it is whole). Runs to the end even if the client has gone;
    it owns the writer's lock until then. ``quotas``: the upload's length
    is deferred and its owner has limits, so the new offset is checked
    against them (refused: the bytes are cut off again)."""
    try:
        offset = await writer.make_durable()
        try:
            async with blob_transaction(database, store) as (session, changes):
                # FOR UPDATE: a DELETE or a sweep in another server waits for
                # this offset (PostgreSQL; SQLite's writer excludes all others).
                upload = await session.get(Upload, upload_id, with_for_update=True)
                if upload is None:
                    raise NotFound(f"The upload {upload_id} was removed while it was written.")
                upload.offset = offset
                if patch.new_length is not None:
                    upload.length = patch.new_length
                if quotas is not None and upload.length is None:
                    await quotas.check_room(
                        session, upload.owner_id, offset, 1, except_upload=upload_id
                    )
                upload.expires_at = utc_now() + patch.expires_in
                finished = upload.length is not None and offset == upload.length
                if finished:
                    await _complete(session, changes, store, upload, state.hexdigest())
                if before_commit is not None:
                    await before_commit(session, upload)
        except QuotaExceeded:
            await writer.roll_back()
            raise
        if finished:
            metrics.resumable_upload_finished()
        hashes.put(upload_id, offset, state)
        return upload
    finally:
        writer.release()


async def _past_completion(upload: Upload, chunks: AsyncIterator[bytes], patch: Patch) -> Upload:
    """A PATCH at the end of a completed upload, whose bytes are now the
    file's blob. Empty, it is a client retrying the PATCH that completed it
    (it missed the answer): answered the same, as tusd does. Bytes past the
    length are refused as they are for any upload (413), none kept."""
    async for chunk in chunks:
        if chunk:
            raise TooLarge(
                f"The upload is complete: no byte goes past its length of {upload.length}."
            )
    if patch.checksum is not None:
        algorithm, expected = patch.checksum
        if CHECKSUM_ALGORITHMS[algorithm]().digest() != expected:
            raise ChecksumMismatch("The body's checksum does not match Upload-Checksum.")
    return upload


async def _reserve_length(
    database: Database, quotas: Quotas, upload_id: str, offset: int, length: int
) -> None:
    """A PATCH sets a deferred length: take its room in the owner's quota
    before the body is read (the upload held only its bytes until now)."""
    async with database.sessionmaker() as session, database.writing(session):
        upload = await get_upload(session, upload_id)
        if upload.offset != offset:
            raise OffsetMismatch(f"The upload's offset is now {upload.offset}.")
        if upload.length is None:
            await quotas.check_room(session, upload.owner_id, length, 1, except_upload=upload_id)
            upload.length = length


async def append(
    database: Database,
    store: ResumableStore,
    hashes: HashStates,
    quotas: Quotas,
    access: Access,
    upload_id: str,
    chunks: AsyncIterator[bytes],
    patch: Patch,
    before_commit: UploadHook | None = None,
) -> Upload:
    """Append a PATCH body at ``patch.offset``. A body cut off part-way is
    kept up to where it stopped, unless it carried a checksum (which cannot
    be verified then): then nothing of it is kept."""
    async with database.sessionmaker() as session:
        upload = await get_upload(session, upload_id, access)
        limits = await quotas.limits(session, upload.owner_id)
        # Bytes a deferred-length upload may hold in all, as read now.
        room = None
        if upload.length is None and patch.new_length is None and not limits.unlimited:
            room = await quotas.room(session, upload.owner_id, except_upload=upload_id)
    length = upload.length
    if patch.new_length is not None:
        if length is not None and length != patch.new_length:
            raise InvalidInput(
                "Upload-Length cannot change once set.",
                errors=[{"field": "Upload-Length", "message": "already set"}],
            )
        if patch.new_length > patch.max_length:
            raise TooLarge(f"Upload-Length is over the limit of {patch.max_length} bytes.")
        if patch.new_length < upload.offset:
            raise InvalidInput(
                "Upload-Length is below the bytes already received.",
                errors=[{"field": "Upload-Length", "message": "below the offset"}],
            )
        length = patch.new_length
    if patch.offset != upload.offset:
        raise OffsetMismatch(f"The upload's offset is {upload.offset}, not {patch.offset}.")
    if upload.completed_at is not None:
        return await _past_completion(upload, chunks, patch)
    if upload.length is None and patch.new_length is not None and not limits.unlimited:
        await _reserve_length(database, quotas, upload_id, upload.offset, patch.new_length)
    limit = patch.max_length if length is None else length
    checked = quotas if upload.length is None and room is not None else None

    checker = CHECKSUM_ALGORITHMS[patch.checksum[0]]() if patch.checksum else None
    try:
        state = hashes.take(upload_id, upload.offset)
        if state is None:
            state = await store.hash_partial(upload_id, upload.offset)
        writer = store.partial_writer(
            upload_id, upload.offset, [state, *([checker] if checker else [])]
        )

        async def still_at() -> bool:
            # Read once the upload is held: a PATCH that committed between
            # our first read and the lock must not have its bytes cut back.
            async with database.sessionmaker() as session:
                current = await session.get(Upload, upload_id)
            return current is not None and current.offset == upload.offset

        await writer.acquire(still_at)
    except PartialBusy:
        raise UploadLocked("Another request is writing to this upload; retry later.") from None
    except PartialMoved:
        async with database.sessionmaker() as session:
            current = await get_upload(session, upload_id)
        raise OffsetMismatch(f"The upload's offset is now {current.offset}.") from None
    except BlobMissing:
        # Another request completed the upload (its partial became the file's
        # blob) or removed it since the row was read.
        async with database.sessionmaker() as session:
            current = await get_upload(session, upload_id)
        if current.offset == upload.offset:
            raise
        raise OffsetMismatch(f"The upload's offset is now {current.offset}.") from None
    recording = False
    try:
        async with database.sessionmaker() as session:
            # Another process may have moved the offset before we had the lock.
            current = await get_upload(session, upload_id)
            if current.offset != upload.offset:
                raise OffsetMismatch(f"The upload's offset is now {current.offset}.")
        try:
            async for chunk in chunks:
                if writer.offset + len(chunk) > limit:
                    raise TooLarge(f"The body goes past the upload's length of {limit} bytes.")
                if room is not None and writer.offset + len(chunk) > room:
                    raise bytes_exceeded(
                        limits.bytes,
                        room - upload.offset,
                        writer.offset + len(chunk) - upload.offset,
                    )
                await writer.write(chunk)
        except (TooLarge, QuotaExceeded):
            await writer.roll_back()
            raise
        except BaseException:
            # Cut off: disconnect, timeout, cancellation.
            if checker is not None:
                await writer.roll_back()
                raise
            recording = True
            await database.commits.run_to_completion(
                _record(database, store, hashes, writer, upload_id, state, patch, None, checked)
            )
            raise
        await writer.flush()
        if checker is not None and patch.checksum and checker.digest() != patch.checksum[1]:
            await writer.roll_back()
            raise ChecksumMismatch("The body's checksum does not match Upload-Checksum.")
        recording = True
        return await database.commits.run_to_completion(
            _record(
                database, store, hashes, writer, upload_id, state, patch, before_commit, checked
            )
        )
    finally:
        if not recording:
            writer.release()


async def _remove(database: Database, store: ResumableStore, upload: Upload) -> None:
    """Delete an upload's row and, if it never completed, its partial bytes
    (waiting for no writer: one that holds the upload makes this 423)."""
    upload_id, incomplete = upload.id, upload.completed_at is None
    writer = store.partial_writer(upload_id, upload.offset, [])
    if incomplete:
        try:
            await writer.acquire()
        except PartialBusy:
            raise UploadLocked("Another request is writing to this upload.") from None
        except BlobMissing:
            pass  # the bytes are already gone; the row still goes
    try:
        async with blob_transaction(database, store) as (session, changes):
            row = await session.get(Upload, upload_id)
            if row is not None:
                await session.delete(row)
            if incomplete:
                changes.after_commit(lambda: store.delete_partial(upload_id))
    finally:
        writer.release()


async def terminate(
    database: Database, store: ResumableStore, access: Access, upload_id: str
) -> None:
    """Remove an upload and its partial bytes. A completed upload's file stays."""
    async with database.sessionmaker() as session:
        upload = await get_upload(session, upload_id, access)
    await _remove(database, store, upload)


async def sweep_expired(database: Database, store: ResumableStore, now: datetime) -> int:
    """Remove expired uploads and their partial bytes; busy ones wait for
    the next sweep."""
    async with database.sessionmaker() as session:
        expired = list(
            await session.scalars(select(Upload).where(Upload.expires_at <= now).limit(1000))
        )
    removed = unfinished = 0
    for upload in expired:
        try:
            await _remove(database, store, upload)
        except UploadLocked:
            continue
        removed += 1
        unfinished += upload.completed_at is None
    metrics.resumable_uploads_expired(unfinished)
    return removed
