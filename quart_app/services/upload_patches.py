"""A PATCH on a resumable upload: bytes appended at its offset under the
upload's lease (services/upload_leases.py), made durable, then the offset
committed by a transaction fenced by the lease's token; the upload
completes when the last byte arrives.

Durability: a PATCH's bytes are made durable (fsync; on S3, stored objects)
before the new offset is committed, so the offset only ever covers durable
bytes. A crash between the two leaves bytes past the offset; the next PATCH
cuts them off or overwrites them (PartialWriter).

Quotas (services/quotas.py): while the length is deferred an upload holds
the bytes it has received, checked when each PATCH commits its offset, and
its length when a PATCH sets it, checked before that PATCH's body is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from quart_app import metrics
from quart_app.db.engine import Database
from quart_app.db.models import UPLOADS, Upload, upload_from_row, utc_now
from quart_app.errors import (
    ChecksumMismatch,
    InvalidInput,
    NotFound,
    OffsetMismatch,
    QuotaExceeded,
    TooLarge,
    UploadLeaseLost,
    UploadLocked,
)
from quart_app.services.accounts import Access
from quart_app.services.files import blob_transaction
from quart_app.services.quotas import Quotas, bytes_exceeded
from quart_app.services.resumable_uploads import (
    CHECKSUM_ALGORITHMS,
    HashStates,
    UploadHook,
    check_live,
    complete_upload,
    get_upload,
)
from quart_app.services.upload_leases import UploadCheck, UploadClaim, UploadLease, take_lease
from quart_app.storage import BlobMissing, PartialBusy, PartialWriter, ResumableStore


@dataclass(frozen=True)
class Patch:
    offset: int
    checksum: tuple[str, bytes] | None
    new_length: int | None
    max_length: int
    expires_in: timedelta
    # Seconds of the upload's lease (UPLOAD_LEASE_SECONDS).
    lease_seconds: float


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
        await lease.keep()  # make_durable writes too (on S3, the last part and the tail)
        offset = await writer.make_durable()
        # The commit settles the lease; no renewal may run past it.
        await lease.stop_renewing()
        length = lease.upload.length
        if (
            patch.new_length is None
            and quotas is None
            and before_commit is None
            and (length is None or offset < length)
        ):
            # The usual PATCH: the upload goes on, nothing else changes.
            going_on = await _commit_offset(database, lease, offset, patch)
            lease.settled()
            hashes.put(upload_id, offset, state)
            return going_on
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
                finished = upload.length is not None and offset == upload.length
                if finished:
                    await complete_upload(session, changes, store, upload, state.hexdigest())
                if before_commit is not None:
                    await before_commit(session, upload)
        except QuotaExceeded:
            await _roll_back(writer, lease)
            raise
        lease.settled()
        if finished:
            metrics.resumable_upload_finished()
        hashes.put(upload_id, offset, state)
        return upload
    finally:
        writer.release()


async def _commit_offset(
    database: Database, lease: UploadLease, offset: int, patch: Patch
) -> Upload:
    """Move the offset of an upload that does not complete, and end the
    lease, in one statement fenced by the lease's token (what _record's
    transaction does, with nothing else to change). When it matches nothing,
    the row says why: gone, or taken over."""
    upload_id = lease.upload_id
    token = lease.token
    expires_at = utc_now() + patch.expires_in

    def commit(connection: Connection) -> Upload | None:
        row = connection.execute(
            update(UPLOADS)
            .where(Upload.id == upload_id, Upload.lease_token == token)
            .values(
                {
                    Upload.offset: offset,
                    Upload.expires_at: expires_at,
                    Upload.lease_owner: None,
                    Upload.lease_expires_at: None,
                }
            )
            .returning(*UPLOADS.c)
        ).first()
        if row is not None:
            return upload_from_row(row)
        if connection.execute(select(Upload.id).where(Upload.id == upload_id)).first() is None:
            raise NotFound(f"The upload {upload_id} was removed while it was written.")
        return None

    committed = await database.run_write(commit)
    if committed is None:
        raise lease.lost_error()
    return committed


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
    by reading the partial back (the bytes below the committed offset never
    change; under the lease, renewed meanwhile, however long that takes)."""
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
    verified then): then nothing of it is kept.

    The row is read, checked and leased in one transaction (a PATCH's only
    one before its bytes): the upload, if ``access`` reaches it, live, at
    ``patch.offset``, and whether the PATCH's Upload-Length fits it."""
    try:
        lease = await take_lease(
            database,
            upload_id,
            patch.offset,
            patch.lease_seconds,
            _checker(access, patch),
            _checks_as_sql(access, patch),
        )
    except _Completed as completed:
        return await _past_completion(completed.upload, chunks, patch)
    try:
        upload = lease.upload
        bounds = await _bounds(database, quotas, upload, patch)
        if bounds.reserve:
            assert patch.new_length is not None
            await _reserve_length(database, quotas, lease, upload.offset, patch.new_length)
        # Taken last: a PATCH refused before its bytes leaves it for the next.
        state = await _starting_hash(database, store, hashes, upload)
        return await _append_leased(
            database, store, hashes, lease, upload.offset, bounds, state, chunks, patch,
            before_commit,
        )  # fmt: skip
    finally:
        await database.commits.run_to_completion(lease.release())


class _Completed(Exception):
    """The upload is complete: a PATCH on it takes no lease."""

    def __init__(self, upload: Upload) -> None:
        super().__init__(upload.id)
        self.upload = upload


def _checker(access: Access, patch: Patch) -> UploadCheck:
    """What a PATCH checks of its upload's row, under the lock, before it
    takes the lease: nothing is taken when one of these raises."""

    def check(upload: Upload) -> None:
        check_live(upload, upload.id, access)
        if patch.new_length is not None:
            if upload.length is not None and upload.length != patch.new_length:
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
        if patch.offset != upload.offset:
            raise OffsetMismatch(f"The upload's offset is {upload.offset}, not {patch.offset}.")
        if upload.completed_at is not None:
            raise _Completed(upload)

    return check


def _checks_as_sql(access: Access, patch: Patch) -> UploadClaim | None:
    """_checker's checks as SQL conditions, for a PATCH that sets no length
    (whose checks need the row in Python): the upload reachable by
    ``access``, live and not completed (the offset take_lease adds)."""
    if patch.new_length is not None:
        return None
    return [
        access.owned(Upload.owner_id),
        Upload.expires_at > utc_now(),
        Upload.completed_at.is_(None),
    ]


async def _bounds(database: Database, quotas: Quotas, upload: Upload, patch: Patch) -> _Bounds:
    """What the PATCH's bytes may reach. Only an upload whose length is
    still deferred reads its owner's quota, and reads it now (not the
    worker's cache): a limit set a moment ago on another worker holds."""
    length = upload.length if patch.new_length is None else patch.new_length
    limit = patch.max_length if length is None else length
    if upload.length is not None:
        return _Bounds(limit=limit, room=None, bytes_limit=0, reserve=False, checked=None)
    async with database.sessionmaker() as session:
        limits = await quotas.limits(session, upload.owner_id)
        # Bytes a deferred-length upload may hold in all, as read now.
        room = None
        if patch.new_length is None and not limits.unlimited:
            room = await quotas.room(session, upload.owner_id, except_upload=upload.id)
    return _Bounds(
        limit=limit,
        room=room,
        bytes_limit=limits.bytes,
        # A deferred length set now takes its room in the quota first.
        reserve=patch.new_length is not None and not limits.unlimited,
        # A deferred length's bytes are checked against the quota at commit.
        checked=quotas if room is not None else None,
    )


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
        hashes.put(upload_id, start, state)  # untouched: the next PATCH may use it
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
        if checker is not None and patch.checksum:
            await writer.flush()  # every byte through the checker (else make_durable does it)
            if checker.digest() != patch.checksum[1]:
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
