"""Files, blobs and batches: creating, replacing, deleting, reading.

Rows and bytes change together. Every change runs in one write transaction
(BEGIN IMMEDIATE on SQLite: no other writer, in any process, runs until it
ends; on PostgreSQL advisory locks on each sha256 and file id it touches, so
no other transaction, in any server, touches them until it ends) and moves
bytes only inside it:

- a new blob is published (renamed to its content address) after its row is
  known to be absent, and unpublished again if the transaction fails;
- a blob no file refers to any more is retired (renamed to trash) inside the
  transaction and purged only after the commit; restored if it fails.

So a committed row always has its bytes, and bytes are never deleted while a
concurrent upload of the same content could still be relying on them. The
bytes themselves are fsynced (sealed) before the transaction starts, so the
slow part holds no lock. A small blob's bytes are instead the row's own
``content`` (storage/__init__.py): they commit with it, and go with it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from contextlib import asynccontextmanager

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from quart_app.db.engine import Database
from quart_app.db.keyset import keyset_page
from quart_app.db.models import Batch, Blob, File, ImportJob, utc_now
from quart_app.errors import NotFound, PreconditionFailed
from quart_app.services.accounts import Access
from quart_app.services.incoming import IncomingFile, reservations_of
from quart_app.storage import BlobStore, SealedBlob

# Gets the sha256 of the file as it is now (None: no such file); the edge
# turns it into the ETag its precondition headers compare with.
Precondition = Callable[[str | None], bool]


def new_id() -> str:
    """128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


def blob_lock(sha256: str) -> str:
    """The name Database.lock takes for a blob's row and bytes."""
    return f"blob:{sha256}"


def file_lock(file_id: str) -> str:
    """The name Database.lock takes for a file id (its row, or its absence)."""
    return f"file:{file_id}"


class BlobChanges:
    """Byte moves made inside one transaction: steps to undo them if it
    fails, and steps to finish them once it has committed."""

    def __init__(self, database: Database, store: BlobStore) -> None:
        self.database = database
        self.store = store
        self._undo: list[tuple[Callable[[], Awaitable[None]], bool]] = []
        self._finish: list[Callable[[], Awaitable[None]]] = []

    def on_undo(self, step: Callable[[], Awaitable[None]], publish: bool = False) -> None:
        """``publish``: the step takes back a publish, which is skipped when
        the commit itself failed on PostgreSQL (see ``undo``)."""
        self._undo.append((step, publish))

    async def lock(self, session: AsyncSession, sha256s: Iterable[str]) -> None:
        """Hold these blobs until the transaction ends (see Database.lock)."""
        await self.database.lock(session, (blob_lock(sha) for sha in sha256s))

    def after_commit(self, step: Callable[[], Awaitable[None]]) -> None:
        self._finish.append(step)

    async def blob_is_stored(self, session: AsyncSession, sha256: str) -> tuple[bool, bool]:
        """(row exists, row exists and its bytes are there)."""
        await self.lock(session, [sha256])
        rows, stored = await self.stored_rows(session, [sha256])
        return bool(rows), bool(stored)

    async def stored_rows(
        self, session: AsyncSession, sha256s: Collection[str]
    ) -> tuple[set[str], set[str]]:
        """Of these, (the blobs with a row, those whose bytes are there: in
        the row itself or in the store). One query and one look for them all."""
        found = await session.execute(
            select(Blob.sha256, Blob.content.is_not(None)).where(Blob.sha256.in_(sha256s))
        )
        rows, in_row = set(), set()
        for sha256, inline in found:
            rows.add(sha256)
            if inline:
                in_row.add(sha256)
        return rows, in_row | await self.store.stored(rows - in_row)

    async def add_blob_row(self, session: AsyncSession, sha256: str, size: int) -> None:
        session.add(Blob(sha256=sha256, size=size))
        await session.flush()

    async def keep(self, session: AsyncSession, incoming: list[IncomingFile]) -> None:
        """Make each upload's bytes the stored blob for its sha256 (the
        first of several with the same bytes; the others are dropped). One
        query finds the blob rows and one look the bytes, for them all; the
        new blobs are published together (their renames and directory
        fsyncs overlap in the thread pool)."""
        sealed: list[tuple[IncomingFile, SealedBlob]] = []
        for item in incoming:
            assert item.sealed is not None, "keep() needs sealed uploads"
            sealed.append((item, item.sealed))
        sizes = {blob.sha256: blob.size for _, blob in sealed}
        # Two uploads of the same bytes in two servers: the second waits for
        # the first's commit, then finds its row and drops its own copy.
        await self.lock(session, sizes)
        rows, stored = await self.stored_rows(session, sizes)
        first: dict[str, IncomingFile] = {}
        dropped: list[IncomingFile] = []
        for item, blob in sealed:
            if blob.sha256 in stored or blob.sha256 in first:
                dropped.append(item)  # identical bytes are (or will be) stored
            else:
                first[blob.sha256] = item
        in_row = {sha: item.sealed.content for sha, item in first.items() if item.sealed}
        in_row = {sha: content for sha, content in in_row.items() if content is not None}
        on_disk = [item for sha, item in first.items() if sha not in in_row]
        outcomes = await asyncio.gather(
            *(item.writer.publish() for item in on_disk), return_exceptions=True
        )
        for item, outcome in zip(on_disk, outcomes, strict=True):
            if outcome is True:
                self.on_undo(item.writer.unpublish, publish=True)
                self.after_commit(item.writer.settle)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        for item in dropped:
            await item.writer.discard()
        for sha in rows & in_row.keys():  # a row whose bytes were lost: now in the row
            await session.execute(
                update(Blob).where(Blob.sha256 == sha).values(content=in_row[sha])
            )
        new_rows = [
            {"sha256": sha, "size": sizes[sha], "content": in_row.get(sha), "created_at": utc_now()}
            for sha in first
            if sha not in rows
        ]
        if new_rows:
            await session.execute(insert(Blob), new_rows)

    async def release(self, session: AsyncSession, sha256: str) -> None:
        """Drop a blob that no file (nor import job's archive) refers to any more."""
        await self.lock(session, [sha256])
        refs = await session.scalar(
            select(func.count()).select_from(File).where(File.sha256 == sha256)
        )
        if refs:
            return
        jobs = await session.scalar(
            select(func.count()).select_from(ImportJob).where(ImportJob.archive_sha256 == sha256)
        )
        if jobs:
            return
        await session.execute(delete(Blob).where(Blob.sha256 == sha256))
        token = await self.store.retire(sha256)
        if token is not None:
            retired = token
            self.on_undo(lambda: self.store.restore(retired))
            self.after_commit(lambda: self.store.purge(retired))

    async def undo(self, commit_failed: bool = False) -> None:
        """Take back the byte moves. When PostgreSQL's commit itself failed
        (the connection lost), the rows may have committed after all:
        published bytes stay, with their publishing markers, for crash
        recovery to decide by the rows (an orphan at worst, never a row
        without its bytes); retired bytes still go back."""
        in_doubt = commit_failed and not self.database.is_sqlite
        for step, publish in reversed(self._undo):
            if not (publish and in_doubt):
                await step()

    async def finish(self) -> None:
        await asyncio.gather(*(step() for step in self._finish))


@asynccontextmanager
async def blob_transaction(
    database: Database, store: BlobStore, since: float | None = None
) -> AsyncIterator[tuple[AsyncSession, BlobChanges]]:
    """A write transaction whose byte moves are undone, while the write lock
    is still held, if it fails. Its own session: it may outlive the request
    (it is shielded from a client's disconnect). ``since``: see
    Database.writing."""
    changes = BlobChanges(database, store)
    async with database.sessionmaker() as session, database.writing(session, since):
        try:
            yield session, changes
        except BaseException:
            await changes.undo()
            raise
        try:
            await session.commit()
        except BaseException:
            await changes.undo(commit_failed=True)
            raise
    await changes.finish()


def new_file(item: IncomingFile, batch_id: str | None, owner_id: int) -> File:
    """The row for a sealed upload, under a new id."""
    assert item.sealed is not None
    now = utc_now()
    return File(
        id=new_id(),
        owner_id=owner_id,
        filename=item.filename,
        content_type=item.content_type,
        size=item.sealed.size,
        sha256=item.sealed.sha256,
        batch_id=batch_id,
        created_at=now,
        updated_at=now,
    )


def file_row(file: File) -> dict[str, object]:
    """A new file's columns, for a bulk INSERT (seq is assigned by it)."""
    return {
        "id": file.id,
        "owner_id": file.owner_id,
        "filename": file.filename,
        "content_type": file.content_type,
        "size": file.size,
        "sha256": file.sha256,
        "batch_id": file.batch_id,
        "created_at": file.created_at,
        "updated_at": file.updated_at,
    }


FilesHook = Callable[[AsyncSession, list[File], Batch | None], Awaitable[None]]


async def create_files(
    database: Database,
    store: BlobStore,
    owner_id: int,
    incoming: list[IncomingFile],
    as_batch: bool,
    before_commit: FilesHook | None = None,
) -> tuple[list[File], Batch | None]:
    """All the files or none, owned by ``owner_id``; a batch row when several
    arrived together. ``before_commit`` runs inside the transaction (the
    Idempotency-Key record commits with the files)."""
    async with blob_transaction(database, store) as (session, changes):
        batch = Batch(id=new_id(), owner_id=owner_id, created_at=utc_now()) if as_batch else None
        if batch is not None:
            session.add(batch)
        await changes.keep(session, incoming)
        files = [new_file(item, batch.id if batch else None, owner_id) for item in incoming]
        session.add_all(files)
        await session.flush()
        for reservation in reservations_of(incoming):
            await reservation.release(session)
        if before_commit is not None:
            await before_commit(session, files, batch)
    return files, batch


def _reachable(access: Access, file_id: str) -> Select[File]:
    """The file ``file_id`` as ``access`` reaches it. File ids are unique per
    owner; an admin reaching an id that several owners use gets its own file
    first, then the earliest made (README "Accounts")."""
    query = select(File).where(File.id == file_id, access.owned(File.owner_id))
    if access.admin:
        query = query.order_by((File.owner_id == access.user_id).desc(), File.seq).limit(1)
    return query


async def find_file(session: AsyncSession, access: Access, file_id: str) -> File | None:
    """The file ``file_id`` as ``access`` reaches it, or None."""
    file: File | None = await session.scalar(_reachable(access, file_id))
    return file


async def put_file(
    database: Database,
    store: BlobStore,
    access: Access,
    file_id: str,
    incoming: IncomingFile,
    precondition: Precondition,
) -> tuple[File, bool]:
    """Create or replace the file ``file_id``; True when it was created.
    ``precondition`` gets the current sha256 (None if absent) inside the
    transaction, so a concurrent change cannot slip between check and write.
    A new file belongs to ``access``'s account."""
    assert incoming.sealed is not None
    async with blob_transaction(database, store) as (session, changes):
        # Two PUTs (or a PUT and a DELETE) of one id in two servers: the
        # second sees what the first left, preconditions included.
        await database.lock(session, [file_lock(file_id)])
        file = await session.scalar(_reachable(access, file_id))
        if not precondition(None if file is None else file.sha256):
            raise PreconditionFailed("The file's current state does not match the precondition.")
        # Both blobs at once, in key order: two replacements swapping
        # contents must not lock them in opposite orders.
        await changes.lock(session, [incoming.sealed.sha256, *([file.sha256] if file else [])])
        await changes.keep(session, [incoming])
        now = utc_now()
        created = file is None
        if file is None:
            file = File(id=file_id, owner_id=access.user_id, created_at=now, batch_id=None)
            session.add(file)
            old_sha, old_size = None, -1
        else:
            old_sha, old_size = file.sha256, file.size
        file.filename = incoming.filename
        file.content_type = incoming.content_type
        file.size = incoming.sealed.size
        file.sha256 = incoming.sealed.sha256
        file.updated_at = now
        await session.flush()
        if old_sha is not None and old_sha != file.sha256:
            await changes.release(session, old_sha)
        reservation = incoming.reservation
        if reservation is not None:
            if not reservation.limits.unlimited and file.size > old_size:
                # The room was reserved against the file as it was then; a
                # concurrent replace or delete may have changed what this
                # one frees, so what the owner holds is checked again.
                await reservation.quotas.check_room(
                    session, file.owner_id, 0, 0, except_reservation=reservation.id
                )
            await reservation.release(session)
    return file, created


async def delete_file(
    database: Database, store: BlobStore, access: Access, file_id: str, precondition: Precondition
) -> None:
    async with blob_transaction(database, store) as (session, changes):
        await database.lock(session, [file_lock(file_id)])
        file = await session.scalar(_reachable(access, file_id))
        if file is None:
            raise NotFound("There is no such file.")
        if not precondition(file.sha256):
            raise PreconditionFailed("The file's current state does not match If-Match.")
        await session.delete(file)
        await session.flush()
        await changes.release(session, file.sha256)


async def get_file(session: AsyncSession, access: Access, file_id: str) -> File:
    file = await session.scalar(_reachable(access, file_id))
    if file is None:
        raise NotFound("There is no such file.")
    return file


async def list_files(
    session: AsyncSession, access: Access, after: int, limit: int
) -> tuple[list[File], bool]:
    """A page of the files ``access`` reaches (an admin's: everyone's)."""
    return await keyset_page(
        session, File, File.seq, after, limit, where=access.owned(File.owner_id)
    )


async def get_batch(
    session: AsyncSession, access: Access, batch_id: str
) -> tuple[Batch, list[File]]:
    batch = await session.get(Batch, batch_id)
    if batch is None or not access.owns(batch.owner_id):
        raise NotFound("There is no such batch.")
    files = await session.scalars(select(File).where(File.batch_id == batch_id).order_by(File.seq))
    return batch, list(files)
