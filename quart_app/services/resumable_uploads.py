"""Resumable uploads: create, complete, terminate, expire. A PATCH's
bytes are appended by services/upload_patches.py, one writer at a time per
upload across servers: the upload's lease in the database
(services/upload_leases.py).

The sha256 of the whole upload is computed as bytes stream in, across
PATCHes: each process keeps the hash state of the uploads it served
(HashStates); after a restart, or when another worker took the previous
PATCH, the state is rebuilt by reading the partial file once.

Quotas (services/quotas.py): an unfinished upload holds its Upload-Length
and one file in its owner's quota, checked when it is created (a deferred
length: see services/upload_patches.py).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from quart_app import metrics
from quart_app.db.engine import Database
from quart_app.db.models import File, Upload, utc_now
from quart_app.errors import (
    Conflict,
    Gone,
    NotFound,
    UploadLocked,
)
from quart_app.services.accounts import Access
from quart_app.services.files import BlobChanges, blob_transaction, file_lock, new_id
from quart_app.services.quotas import Quotas
from quart_app.services.upload_leases import lease_is_live, lease_now
from quart_app.storage import ResumableStore

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


def check_live(upload: Upload | None, upload_id: str, access: Access | None = None) -> Upload:
    """The upload as read, if it is live and ``access`` reaches it (None:
    the caller has already checked); else NotFound or Gone."""
    # Another owner's upload is absent, expired or not (no existence leak).
    if upload is None or (access is not None and not access.owns(upload.owner_id)):
        raise NotFound("There is no such upload.")
    if upload.expires_at <= utc_now():
        raise Gone(f"The upload {upload_id} expired at {upload.expires_at.isoformat()}.")
    return upload


async def get_upload(session: AsyncSession, upload_id: str, access: Access | None = None) -> Upload:
    """The live upload; with ``access``, only if it reaches it (None: the
    caller has already checked)."""
    return check_live(await session.get(Upload, upload_id), upload_id, access)


async def complete_upload(
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
                await complete_upload(session, changes, store, upload, hashlib.sha256().hexdigest())
            if before_commit is not None:
                await before_commit(session, upload)
    except BaseException:
        await store.delete_partial(upload_id)
        raise
    metrics.resumable_upload_created()
    if upload.completed_at is not None:
        metrics.resumable_upload_finished()
    return upload


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
