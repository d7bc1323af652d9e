"""Resumable uploads: create, append, complete, terminate, expire.

Durability: a PATCH's bytes are made durable (fsync; on S3, stored objects)
before the new offset is committed, so the offset only ever covers durable
bytes. A crash between the two leaves bytes past the offset; the next PATCH
cuts them off or overwrites them (PartialWriter). One writer at a time per
upload, across servers: the upload's lease in the database, whose fencing
token the committing transaction checks (services/upload_leases.py).

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
    UploadLeaseLost,
    UploadLocked,
)
from quart_app.services.accounts import Access
from quart_app.services.files import BlobChanges, blob_transaction, file_lock, new_id
from quart_app.services.quotas import Quotas, bytes_exceeded
from quart_app.services.upload_leases import UploadLease, lease_is_live, lease_now, take_lease
from quart_app.storage import BlobMissing, PartialBusy, PartialWriter, ResumableStore

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
    # Seconds of the upload's lease (UPLOAD_LEASE_SECONDS).
    lease_seconds: float


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
    return upload


async def _roll_back(writer: PartialWriter, lease: UploadLease) -> None:
    """Cut the partial back to where this PATCH started, but only while its
    lease still holds: after a takeover those bytes are another's."""
    if await lease.still_held():
        await writer.roll_back()


async def _record(
    database: Database,
    store: ResumableStore,
    hashes: HashStates,
    writer: PartialWriter,
    lease: UploadLease,
    state: Any,
    patch: Patch,
    before_commit: UploadHook | None,
    quotas: Quotas | None = None,
) -> Upload:
    """Make what arrived durable, then move the offset over it (and complete
    the upload when it is whole), fenced by the lease's token; the lease
    ends with that commit. Runs to the end even if the client has gone.
    ``quotas``: the upload's length is deferred and its owner has limits,
    so the new offset is checked against them (refused: the bytes are cut
    off again)."""
    upload_id = lease.upload_id
    try:
        offset = await writer.make_durable()
        # The commit settles the lease; no renewal may run past it.
        await lease.stop_renewing()
        try:
            async with blob_transaction(database, store) as (session, changes):
                # FOR UPDATE: a takeover of the lease in another server waits
                # for this commit, or this one sees its token (PostgreSQL;
                # SQLite's writer excludes all others).
                upload = await session.get(Upload, upload_id, with_for_update=True)
                if upload is None:
                    raise NotFound(f"The upload {upload_id} was removed while it was written.")
                lease.settle(upload)
                upload.offset = offset
                if patch.new_length is not None:
                    upload.length = patch.new_length
                if quotas is not None and upload.length is None:
                    await quotas.check_room(
                        session, upload.owner_id, offset, 1, except_upload=upload_id
                    )
                upload.expires_at = utc_now() + patch.expires_in
                if upload.length is not None and offset == upload.length:
                    await _complete(session, changes, store, upload, state.hexdigest())
                if before_commit is not None:
                    await before_commit(session, upload)
        except QuotaExceeded:
            await _roll_back(writer, lease)
            raise
        lease.settled()
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
    database: Database, quotas: Quotas, lease: UploadLease, offset: int, length: int
) -> None:
    """A PATCH sets a deferred length: take its room in the owner's quota
    before the body is read (the upload held only its bytes until now)."""
    async with database.sessionmaker() as session, database.writing(session):
        upload = await get_upload(session, lease.upload_id)
        if upload.offset != offset:
            raise OffsetMismatch(f"The upload's offset is now {upload.offset}.")
        if upload.lease_token != lease.token:
            raise UploadLocked("Another request is writing to this upload; retry later.")
        if upload.length is None:
            await quotas.check_room(
                session, upload.owner_id, length, 1, except_upload=lease.upload_id
            )
            upload.length = length


async def _starting_hash(
    database: Database, store: ResumableStore, hashes: HashStates, upload: Upload
) -> Any:
    """The running sha256 at the upload's offset: this worker's, or rebuilt
    by reading the partial back (before the lease: it may take a while, and
    the bytes below the committed offset never change)."""
    state = hashes.take(upload.id, upload.offset)
    if state is not None:
        return state
    try:
        return await store.hash_partial(upload.id, upload.offset)
    except BlobMissing:
        # Another request completed the upload (its partial became the file's
        # blob) or removed it since the row was read.
        async with database.sessionmaker() as session:
            current = await get_upload(session, upload.id)
        if current.offset == upload.offset:
            raise
        raise OffsetMismatch(f"The upload's offset is now {current.offset}.") from None


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
    """Append a PATCH body at ``patch.offset``, under the upload's lease
    (services/upload_leases.py). A body cut off part-way is kept up to
    where it stopped, unless it carried a checksum (which cannot be
    verified then): then nothing of it is kept."""
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
    bounds = _Bounds(
        limit=patch.max_length if length is None else length,
        room=room,
        bytes_limit=limits.bytes,
        # A deferred length set now takes its room in the quota first.
        reserve=upload.length is None and patch.new_length is not None and not limits.unlimited,
        # A deferred length's bytes are checked against the quota at commit.
        checked=quotas if upload.length is None and room is not None else None,
    )
    state = await _starting_hash(database, store, hashes, upload)
    try:
        lease = await take_lease(database, upload_id, upload.offset, patch.lease_seconds)
    except UploadLocked:
        hashes.put(upload_id, upload.offset, state)  # untouched: the next PATCH may use it
        raise
    try:
        if bounds.reserve:
            assert patch.new_length is not None
            await _reserve_length(database, quotas, lease, upload.offset, patch.new_length)
        return await _append_leased(
            database, store, hashes, lease, upload.offset, bounds, state, chunks, patch,
            before_commit,
        )  # fmt: skip
    finally:
        await database.commits.run_to_completion(lease.release())


@dataclass(frozen=True)
class _Bounds:
    """What a PATCH's bytes may reach, as read when it began."""

    limit: int  # the upload's length, or the largest upload
    room: int | None  # a deferred length's bytes the owner's quota allows
    bytes_limit: int
    reserve: bool
    checked: Quotas | None


async def _append_leased(
    database: Database,
    store: ResumableStore,
    hashes: HashStates,
    lease: UploadLease,
    start: int,
    bounds: _Bounds,
    state: Any,
    chunks: AsyncIterator[bytes],
    patch: Patch,
    before_commit: UploadHook | None,
) -> Upload:
    upload_id = lease.upload_id
    limit, room = bounds.limit, bounds.room
    checker = CHECKSUM_ALGORITHMS[patch.checksum[0]]() if patch.checksum else None
    writer = store.partial_writer(upload_id, start, [state, *([checker] if checker else [])])
    try:
        await writer.acquire()
    except PartialBusy:
        # On disk: a PATCH whose lease ran out is still writing (a stalled
        # process); its bytes must not mix with ours.
        raise UploadLocked("Another request is writing to this upload; retry later.") from None
    except BlobMissing:
        async with database.sessionmaker() as session:
            await get_upload(session, upload_id)  # NotFound, Gone
        raise
    recording = False
    try:
        try:
            async for chunk in chunks:
                if writer.offset + len(chunk) > limit:
                    raise TooLarge(f"The body goes past the upload's length of {limit} bytes.")
                if room is not None and writer.offset + len(chunk) > room:
                    raise bytes_exceeded(
                        bounds.bytes_limit, room - start, writer.offset + len(chunk) - start
                    )
                await lease.keep()
                await writer.write(chunk)
        except (TooLarge, QuotaExceeded):
            await _roll_back(writer, lease)
            raise
        except UploadLeaseLost:
            raise  # the bytes past the offset are another's now: left alone
        except BaseException:
            # Cut off: disconnect, timeout, cancellation.
            if checker is not None:
                await database.commits.run_to_completion(_roll_back(writer, lease))
                raise
            recording = True
            await database.commits.run_to_completion(
                _record(database, store, hashes, writer, lease, state, patch, None, bounds.checked)
            )
            raise
        await writer.flush()
        if checker is not None and patch.checksum and checker.digest() != patch.checksum[1]:
            await _roll_back(writer, lease)
            raise ChecksumMismatch("The body's checksum does not match Upload-Checksum.")
        recording = True
        return await database.commits.run_to_completion(
            _record(
                database, store, hashes, writer, lease, state, patch, before_commit, bounds.checked
            )
        )
    finally:
        if not recording:
            writer.release()


async def _remove(database: Database, store: ResumableStore, upload: Upload) -> None:
    """Delete an upload's row and, if it never completed, its partial bytes,
    unless a PATCH holds its lease (423: waiting for none)."""
    upload_id = upload.id
    async with blob_transaction(database, store) as (session, changes):
        # FOR UPDATE: a PATCH taking the lease in another server waits.
        row = await session.get(Upload, upload_id, with_for_update=True)
        if row is None:
            return
        if lease_is_live(row, lease_now()):
            raise UploadLocked("Another request is writing to this upload.")
        await session.delete(row)
        if row.completed_at is None:
            changes.after_commit(lambda: store.delete_partial(upload_id))


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
    removed = 0
    for upload in expired:
        try:
            await _remove(database, store, upload)
        except UploadLocked:
            continue
        removed += 1
    return removed
