"""Leases on resumable uploads: one writer at a time per upload, across
every server, kept in the database without holding a connection.

A PATCH takes its upload's lease in one short write transaction: owner
(host and pid, for people reading the table), expiry (now + the lease
duration) and a fencing token, raised by one each time a lease is taken.
It is granted only while no unexpired lease is held and the committed
offset is still the one the PATCH starts at. In the usual case that is one
statement (an UPDATE whose WHERE holds all the PATCH checks, RETURNING the
row); only when it matches nothing is the row read under the lock to say
why (or to wait for a live lease). While the body streams in no
connection and no row lock is held: a row lock (``FOR UPDATE``) for the
length of a body would pin one pooled connection per upload for minutes,
and SQLite has none. Every third of the lease the holder renews it in the
background (an UPDATE that matches only its own token, a connection for a
moment), so a live PATCH keeps its upload however slow its client; before
each write it checks that a renewal held lately (a process that stalled
past its lease confirms first, and stops if it was taken over). The offset is
committed, and the lease cleared, fenced by the token: by one UPDATE whose
WHERE names it when the upload goes on, else (it completes, or its quota
or an idempotent answer is written with it) by a transaction that reads
the row ``FOR UPDATE`` and checks it. A PATCH whose lease lapsed (its
server stalled or was killed) and was taken over commits nothing.

Both statements of the usual PATCH run as Core statements in a
transaction of their own (Database.run_write: on SQLite whole on the
database's own thread, elsewhere on Database.writing_connection), without
an ORM session: on these paths the session's machinery costs about as much
as the SQL.

Expiry compares server clocks (keep them in sync: NTP); the fencing token
keeps every commit right whatever the clocks say.

On SQLite a lease's transactions (take, renew, release) commit without
waiting for the WAL's fsync (Database.writing's durable=False): one fsync
less per PATCH. Such a commit is lost only in a crash of the operating
system, which also ends every process that could hold the lease (SQLite
serves one machine), so a token handed out again after it fences nothing
alive; the offset commit that follows fsyncs the WAL, lease included. On
PostgreSQL they stay durable: its server can crash and come back while
ours live on, and a lease lost that way would let two writers in at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.engine import Connection

from quart_app.db.engine import Database
from quart_app.db.models import UPLOADS, Upload, upload_from_row
from quart_app.errors import NotFound, OffsetMismatch, UploadLeaseLost, UploadLocked

log = logging.getLogger("quart_app.uploads")

# Sees an upload's row, read under the lock, before its lease is taken.
UploadCheck = Callable[[Upload], None]
# The same checks as SQL conditions on the row, for the one-statement take
# (take_lease's ``claim``): where they all hold, the check passes.
UploadClaim = Sequence[ColumnElement[bool]]

# Seconds a PATCH waits for the upload's lease before 423: the request
# before it (often the same client's previous PATCH, or the tail of one
# whose client hung up) lets go as soon as its commit ends.
LEASE_WAIT_SECONDS = 2.0
LEASE_POLL_SECONDS = 0.05


def lease_now() -> datetime:
    """Now in UTC with microseconds (a lease may be a few seconds long)."""
    return datetime.now(UTC)


def holder_name() -> str:
    return f"{socket.gethostname()} {os.getpid()}"[:255]


def lease_is_live(upload: Upload, now: datetime) -> bool:
    return upload.lease_expires_at is not None and upload.lease_expires_at > now


class UploadLease:
    """The lease a PATCH holds on one upload (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        upload_id: str,
        token: int,
        seconds: float,
        upload: Upload,
    ) -> None:
        self.database = database
        self.upload_id = upload_id
        # The row as read when the lease was taken (its offset is where the
        # PATCH starts), for the holder to read from.
        self.upload = upload
        self.token = token
        self.seconds = seconds
        # Loop time of the last renewal known to have held (its start).
        self._confirmed_at = asyncio.get_running_loop().time()
        self._lost = False
        self._released = False
        self._stop = asyncio.Event()
        self._renewer = asyncio.ensure_future(self._renew())

    def lost_error(self) -> UploadLeaseLost:
        return UploadLeaseLost(
            f"The upload {self.upload_id} was taken over by another request after this "
            "one's lease ran out; nothing of this PATCH was kept."
        )

    async def _extend(self) -> bool:
        """Push the expiry on, if the lease is still this one's."""
        started = asyncio.get_running_loop().time()
        async with (
            self.database.sessionmaker() as session,
            self.database.writing(session, durable=False),
        ):
            result = await session.execute(
                update(Upload)
                .where(Upload.id == self.upload_id, Upload.lease_token == self.token)
                .values(lease_expires_at=lease_now() + timedelta(seconds=self.seconds))
                .execution_options(synchronize_session=False)
            )
        if getattr(result, "rowcount", 1) != 1:
            self._lost = True
            return False
        self._confirmed_at = max(self._confirmed_at, started)
        return True

    async def _renew(self) -> None:
        """Every third of the lease, whatever the client's pace (a slow
        client keeps its upload); stopped cooperatively, never cancelled
        inside a transaction."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.seconds / 3):
                    await self._stop.wait()
            if self._stop.is_set():
                return
            try:
                if not await self._extend():
                    return
            except Exception:  # the database failing: keep() will find out
                log.warning("renewing the lease on upload %s failed", self.upload_id, exc_info=True)

    async def stop_renewing(self) -> None:
        self._stop.set()
        await asyncio.shield(self._renewer)

    async def keep(self) -> None:
        """Before a write: UploadLeaseLost when another request has taken
        the upload over. When no renewal has held for two thirds of the
        lease (this process stalled, or the database failed), one must
        hold now, before anything more is written."""
        if self._lost:
            raise self.lost_error()
        loop = asyncio.get_running_loop()
        if loop.time() >= self._confirmed_at + self.seconds * 2 / 3 and not await self._extend():
            raise self.lost_error()

    async def still_held(self) -> bool:
        """Whether the lease is still this one's (renewing it): bytes past
        the committed offset may be cut back only then."""
        return not self._released and not self._lost and await self._extend()

    def settle(self, upload: Upload) -> None:
        """Inside the transaction that commits the offset, on the row read
        ``FOR UPDATE``: UploadLeaseLost unless the token is still this
        one's; else the lease is cleared with the commit."""
        if upload.lease_token != self.token:
            raise self.lost_error()
        upload.lease_owner = None
        upload.lease_expires_at = None

    def settled(self) -> None:
        """The transaction that settled the lease committed."""
        self._released = True

    async def release(self) -> None:
        """Let go (idempotent; nothing to do once settled). A release that
        fails leaves the lease to expire."""
        await self.stop_renewing()
        if self._released:
            return
        self._released = True
        await _let_go(self.database, self.upload_id, self.token)


async def _let_go(database: Database, upload_id: str, token: int) -> None:
    """End the lease ``token``, if it is still the upload's."""

    def let_go(connection: Connection) -> None:
        connection.execute(
            update(UPLOADS)
            .where(Upload.id == upload_id, Upload.lease_token == token)
            .values({Upload.lease_owner: None, Upload.lease_expires_at: None})
        )

    await database.run_write(let_go, durable=False)


async def _free_at(database: Database, upload_id: str, offset: int) -> bool:
    """A read (no write transaction: SQLite's write lock is taken only when
    the lease looks free): is the upload free to lease at ``offset``?"""
    async with database.sessionmaker() as session:
        row = (
            await session.execute(
                select(Upload.offset, Upload.lease_expires_at).where(Upload.id == upload_id)
            )
        ).first()
    if row is None:
        raise NotFound("There is no such upload.")
    if row.offset != offset:
        raise OffsetMismatch(f"The upload's offset is now {row.offset}.")
    expires = row.lease_expires_at
    return expires is None or expires <= lease_now()


async def _claim(
    database: Database, upload_id: str, offset: int, seconds: float, claim: UploadClaim
) -> tuple[int, Upload] | None:
    """The lease in one statement, when the row is at ``offset``, no live
    lease holds it and every condition of ``claim`` holds; else None and
    nothing changed. (On PostgreSQL a concurrent take waits on the row and
    evaluates the WHERE again on the row as the other committed it.)"""
    now = lease_now()
    owner = holder_name()

    def claim_row(connection: Connection) -> Upload | None:
        row = connection.execute(
            update(UPLOADS)
            .where(
                Upload.id == upload_id,
                Upload.offset == offset,
                or_(Upload.lease_expires_at.is_(None), Upload.lease_expires_at <= now),
                *claim,
            )
            .values(
                {
                    Upload.lease_token: Upload.lease_token + 1,
                    Upload.lease_owner: owner,
                    Upload.lease_expires_at: now + timedelta(seconds=seconds),
                }
            )
            .returning(*UPLOADS.c)
        ).first()
        return None if row is None else upload_from_row(row)

    upload = await database.run_write(claim_row, durable=False)
    if upload is None:
        return None
    return upload.lease_token, upload


async def _take(
    database: Database, upload_id: str, offset: int, seconds: float, check: UploadCheck | None
) -> tuple[int, Upload] | None:
    async with database.sessionmaker() as session, database.writing(session, durable=False):
        # FOR UPDATE (PostgreSQL; SQLite's writer excludes all others): two
        # servers taking over one lapsed lease would both think they hold it.
        upload = await session.get(Upload, upload_id, with_for_update=True)
        if upload is None:
            raise NotFound("There is no such upload.")
        if check is not None:
            try:
                check(upload)
            except Exception:
                # Rolled back, nothing taken; the row stays readable (out of
                # the session, the rollback does not expire it) for an
                # exception that carries it.
                session.expunge(upload)
                raise
        if upload.offset != offset:
            raise OffsetMismatch(f"The upload's offset is now {upload.offset}.")
        now = lease_now()
        if lease_is_live(upload, now):
            return None
        upload.lease_token += 1
        upload.lease_owner = holder_name()
        upload.lease_expires_at = now + timedelta(seconds=seconds)
        return upload.lease_token, upload


async def take_lease(
    database: Database,
    upload_id: str,
    offset: int,
    seconds: float,
    check: UploadCheck | None = None,
    claim: UploadClaim | None = None,
) -> UploadLease:
    """The upload's lease for a PATCH at ``offset``: waits up to
    LEASE_WAIT_SECONDS for another holder to let go, then UploadLocked (423).
    OffsetMismatch when the offset moved meanwhile, NotFound when the upload
    went. ``check`` sees the row, read under the lock, before anything is
    taken (what it raises is raised); the lease's ``upload`` is that row.
    ``claim``: ``check`` as SQL conditions (None: it has none), tried first
    as one statement. The one transaction a PATCH needs before its bytes
    (the usual case)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + LEASE_WAIT_SECONDS
    # Taken at once when free (the usual case): in one statement when the
    # checks have a claim. Else, or when it matched nothing, the row read
    # under the lock says why (what check raises), or that a lease is live.
    # While one is, a read first sees when it frees: waiting requests do
    # not take SQLite's write lock only to find it held.
    taken = None
    if claim is not None:
        taken = await _claim(database, upload_id, offset, seconds, claim)
        if taken is not None and check is not None:
            # The claim should say what the check does; should they ever
            # part, the check still decides (and nothing stays taken).
            try:
                check(taken[1])
            except BaseException:
                await database.commits.run_to_completion(_let_go(database, upload_id, taken[0]))
                raise
    if taken is None:
        taken = await _take(database, upload_id, offset, seconds, check)
    while True:
        if taken is not None:
            token, upload = taken
            return UploadLease(database, upload_id, token, seconds, upload)
        if loop.time() >= give_up:
            raise UploadLocked("Another request is writing to this upload; retry later.")
        await asyncio.sleep(LEASE_POLL_SECONDS)
        if await _free_at(database, upload_id, offset):
            taken = await _take(database, upload_id, offset, seconds, check)
