"""Quotas: bytes (by the files' sizes) and files per account, held against
concurrent uploads by reservations.

What an owner holds is what its files use, plus the room reserved by its
uploads in flight: a ``quota_reservations`` row per request that streams a
file (multipart, raw POST, PUT), and for resumable uploads the upload row
itself (its Upload-Length, or while the length is deferred, the bytes it
has received), until it completes, is terminated or expires. Room is only
ever taken in a write transaction that first locks the owner's row (FOR
UPDATE on PostgreSQL; on SQLite, Database.writing already lets one writer
in at a time) and reads what is held in one statement, so two uploads can
never both take the last room. Storing a file deletes its reservation in
the transaction that adds the file, so what is held never grows then.

An upload with a declared size reserves it before any byte is read; one
without (a chunked body, a multipart body's file parts past what its
Content-Length reserved) reserves as its bytes arrive, ``Reservation.STEP``
bytes at first and then as much again as it holds (at most ``MAX_STEP`` a
step), never more than is left, and is refused as soon as its bytes pass
what is left. A limit of 0 is no limit; an owner without limits takes no
reservation at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from quart_app.db.engine import Database
from quart_app.db.models import File, QuotaReservation, Upload, User, utc_now
from quart_app.errors import NotFound, QuotaExceeded
from quart_app.services.single_flight import SingleFlight
from quart_app.storage import BlobWriter, SealedBlob

MIB = 1024**2
# Past this many owners' limits cached, those too old to use are dropped.
CACHED_OWNERS = 10_000


@dataclass(frozen=True)
class Limits:
    """An owner's limits; 0 is no limit."""

    bytes: int = 0
    files: int = 0

    @property
    def unlimited(self) -> bool:
        return not self.bytes and not self.files


@dataclass(frozen=True)
class Usage:
    bytes: int = 0
    files: int = 0


def user_limits(user: User, defaults: Limits) -> Limits:
    """The user's own limits where an admin set them, else the defaults."""
    return Limits(
        defaults.bytes if user.quota_bytes is None else user.quota_bytes,
        defaults.files if user.quota_files is None else user.quota_files,
    )


async def usage_of(session: AsyncSession, owner_ids: Iterable[int]) -> dict[int, Usage]:
    """What each owner's files use now (owners without files: nothing)."""
    ids = list(owner_ids)
    found = await session.execute(
        select(File.owner_id, func.coalesce(func.sum(File.size), 0), func.count())
        .where(File.owner_id.in_(ids))
        .group_by(File.owner_id)
    )
    usage = {owner: Usage(int(size), int(count)) for owner, size, count in found}
    return {owner: usage.get(owner, Usage()) for owner in ids}


def _exceeded(limits: Limits, held: Usage, bytes: int, files: int) -> QuotaExceeded | None:
    if limits.files and held.files + files > limits.files:
        left = max(0, limits.files - held.files)
        return QuotaExceeded(
            f"The account may have {limits.files} files; {left} more may be stored now.",
            quota="files",
            limit=limits.files,
            remaining=left,
        )
    if limits.bytes and held.bytes + bytes > limits.bytes:
        return bytes_exceeded(limits.bytes, limits.bytes - held.bytes, bytes)
    return None


def bytes_exceeded(limit: int, left: int, needed: int) -> QuotaExceeded:
    """The problem for an upload needing ``needed`` bytes where ``left`` remain."""
    left = max(0, left)
    return QuotaExceeded(
        f"The account may store {limit} bytes; {left} more may be stored now, "
        f"and this upload needs {needed}.",
        quota="bytes",
        limit=limit,
        remaining=left,
    )


class Quotas:
    """The quota rules of one app: the default limits and how long a
    reservation lives (longer than any request body may take:
    ``reservation_seconds``), so that an upload's room is never given to
    another while it runs, and a process that died holding some gives it
    back by then."""

    def __init__(
        self,
        database: Database,
        defaults: Limits,
        reservation_seconds: float,
        limits_cache_seconds: float = 0.0,
    ) -> None:
        self.database = database
        self.defaults = defaults
        self.reservation_ttl = timedelta(seconds=reservation_seconds)
        # owner id -> (monotonic time read, limits): see current_limits.
        self._read: dict[int, tuple[float, Limits]] = {}
        self._cache_seconds = limits_cache_seconds
        # Counts forget(): a read that began before one is not kept.
        self._forgotten = 0
        self._flights: SingleFlight[int, Limits] = SingleFlight()

    async def current_limits(self, owner_id: int) -> Limits:
        """The owner's limits as this process read them less than
        ``limits_cache_seconds`` ago (KEY_CACHE_SECONDS, as keys), else read
        now. Before an upload's first byte: read every time, in a session of
        its own, it was what held 4 KiB uploads back (README "Performance":
        2.6-2.8x with it gone). Room itself is only ever taken with the limits
        read again under the owner's lock (``_grow``), so a cached limit never
        lets two uploads share the last room; what the cache delays is a new
        limit on an owner that had none, on the workers that did not set it
        (``forget`` drops this process's copy at once)."""
        found = self._read.get(owner_id)
        if found is not None and time.monotonic() - found[0] < self._cache_seconds:
            return found[1]
        # One read per owner at a time: uploads in flight when the entry
        # lapses wait for it instead of each reading (single_flight.py).
        return await self._flights.run(owner_id, partial(self._read_limits, owner_id))

    async def _read_limits(self, owner_id: int) -> Limits:
        now = time.monotonic()
        forgotten = self._forgotten
        async with self.database.sessionmaker() as session:
            limits = await self.limits(session, owner_id)
        if forgotten != self._forgotten or self._cache_seconds <= 0:
            return limits  # a change committed meanwhile: this read may predate it
        if len(self._read) >= CACHED_OWNERS:
            self._read = {k: v for k, v in self._read.items() if now - v[0] < self._cache_seconds}
        self._read[owner_id] = (now, limits)
        return limits

    def forget(self, owner_id: int) -> None:
        """The owner's limits changed here: read them again next time."""
        self._forgotten += 1
        self._read.pop(owner_id, None)
        self._flights.forget(owner_id)

    async def limits(self, session: AsyncSession, owner_id: int, lock: bool = False) -> Limits:
        """The owner's limits; with ``lock``, inside a write transaction,
        its row is locked first (FOR UPDATE: a no-op on SQLite, whose
        writers take turns anyway) so that concurrent takers of its room
        take turns on PostgreSQL too."""
        query = select(User.quota_bytes, User.quota_files).where(User.id == owner_id)
        if lock:
            query = query.with_for_update()
        row = (await session.execute(query)).one_or_none()
        if row is None:
            raise NotFound(f"There is no user {owner_id}.")
        return Limits(
            self.defaults.bytes if row[0] is None else row[0],
            self.defaults.files if row[1] is None else row[1],
        )

    async def held(
        self,
        session: AsyncSession,
        owner_id: int,
        now: datetime,
        except_reservation: int | None = None,
        except_upload: str | None = None,
    ) -> Usage:
        """Files, live reservations and live unfinished resumable uploads of
        the owner, read in one statement (one snapshot: a commit that turns
        a reservation into a file cannot fall between two reads)."""

        def alive(query: Any, model: Any, excluded: Any) -> Any:
            return query if excluded is None else query.where(model.id != excluded)

        of_files = File.owner_id == owner_id
        of_reservations = (
            QuotaReservation.owner_id == owner_id,
            QuotaReservation.expires_at > now,
        )
        of_uploads = (
            Upload.owner_id == owner_id,
            Upload.completed_at.is_(None),
            Upload.expires_at > now,
        )
        upload_bytes = func.coalesce(Upload.length, Upload.offset)
        parts = [
            select(func.coalesce(func.sum(File.size), 0)).where(of_files),
            select(func.count()).select_from(File).where(of_files),
            alive(
                select(func.coalesce(func.sum(QuotaReservation.bytes), 0)).where(*of_reservations),
                QuotaReservation,
                except_reservation,
            ),
            alive(
                select(func.coalesce(func.sum(QuotaReservation.files), 0)).where(*of_reservations),
                QuotaReservation,
                except_reservation,
            ),
            alive(
                select(func.coalesce(func.sum(upload_bytes), 0)).where(*of_uploads),
                Upload,
                except_upload,
            ),
            alive(
                select(func.count()).select_from(Upload).where(*of_uploads), Upload, except_upload
            ),
        ]
        row = (await session.execute(select(*(part.scalar_subquery() for part in parts)))).one()
        bytes_held = int(row[0]) + int(row[2]) + int(row[4])
        return Usage(bytes_held, int(row[1]) + int(row[3]) + int(row[5]))

    async def check_room(
        self,
        session: AsyncSession,
        owner_id: int,
        bytes: int,
        files: int,
        except_upload: str | None = None,
        except_reservation: int | None = None,
    ) -> None:
        """Inside a write transaction: raise QuotaExceeded unless the owner
        has room for ``bytes`` and ``files`` more (``except_*``: as if that
        upload or reservation held nothing)."""
        limits = await self.limits(session, owner_id, lock=True)
        if limits.unlimited:
            return
        held = await self.held(session, owner_id, utc_now(), except_reservation, except_upload)
        error = _exceeded(limits, held, bytes, files)
        if error is not None:
            raise error

    async def room(
        self, session: AsyncSession, owner_id: int, except_upload: str | None = None
    ) -> int | None:
        """Bytes the owner may still store (None: no byte limit), as read
        now; only a write transaction's check_room takes it."""
        limits = await self.limits(session, owner_id)
        if not limits.bytes:
            return None
        held = await self.held(session, owner_id, utc_now(), except_upload=except_upload)
        return max(0, limits.bytes - held.bytes)

    def reservation(self, owner_id: int) -> Reservation:
        return Reservation(self, owner_id)

    async def sweep_expired(self, now: datetime) -> int:
        """Delete reservations past their time (already ignored by every
        check): left by a process that died, or a failure that could not
        remove its own."""
        async with self.database.sessionmaker() as session, self.database.writing(session):
            result = await session.execute(
                delete(QuotaReservation).where(QuotaReservation.expires_at <= now)
            )
        return int(getattr(result, "rowcount", 0) or 0)


class Reservation:
    """The room one request holds in its owner's quota for the files it is
    streaming. ``credit``: what the request frees when it stores (a PUT
    replacing a file frees the old one).

    Its owner is whoever commits the files: ``release`` deletes the row in
    the storing transaction; ``cancel`` deletes it when the upload fails."""

    STEP = 1 * MIB
    MAX_STEP = 64 * MIB

    def __init__(self, quotas: Quotas, owner_id: int) -> None:
        self.quotas = quotas
        self.owner_id = owner_id
        self.limits = Limits()
        self.id: int | None = None
        self.bytes = 0  # reserved
        self.files = 0
        self.used_bytes = 0  # taken by what has streamed in
        self.used_files = 0
        self.credit = Usage()

    async def open(
        self,
        declared: int | None,
        slack: int = 0,
        files: int = 1,
        credit: Usage | None = None,
    ) -> None:
        """Read the owner's limits and reserve before any byte is read:
        ``declared`` bytes (less up to ``slack`` if that is all that is left:
        multipart framing), or a first step when nothing is declared."""
        self.credit = credit or Usage()
        self.limits = await self.quotas.current_limits(self.owner_id)
        if self.limits.unlimited:
            return
        files = max(0, files - self.credit.files)
        if declared is None:
            await self._grow(need=0, want=self.STEP, files=files)
        else:
            freed = self.credit.bytes
            await self._grow(need=declared - slack - freed, want=declared - freed, files=files)

    async def take(self, bytes: int = 0, files: int = 0) -> None:
        """Count bytes or files about to be written; grows the reservation
        when they pass it, QuotaExceeded when there is no room."""
        self.used_bytes += bytes
        self.used_files += files
        if self.limits.unlimited:
            return
        over_bytes = bool(self.limits.bytes) and self.used_bytes > self.bytes + self.credit.bytes
        over_files = bool(self.limits.files) and self.used_files > self.files + self.credit.files
        if over_bytes or over_files:
            held = self.bytes + self.credit.bytes
            step = min(self.MAX_STEP, max(self.STEP, self.bytes))
            await self._grow(
                need=self.used_bytes - self.credit.bytes,
                want=max(held, self.used_bytes) + step - self.credit.bytes,
                files=max(self.files, self.used_files - self.credit.files),
            )

    async def _grow(self, need: int, want: int, files: int) -> None:
        """Make the row hold ``files`` files and at least ``need`` bytes
        (``want`` if there is room), in a write transaction of its own."""
        quotas = self.quotas
        need, want, files = max(0, need), max(0, want), max(0, files)
        async with quotas.database.sessionmaker() as session, quotas.database.writing(session):
            limits = await quotas.limits(session, self.owner_id, lock=True)
            self.limits = limits
            held = await quotas.held(session, self.owner_id, utc_now(), self.id)
            error = _exceeded(limits, held, need, files)
            if error is not None:
                raise error
            reserve = min(want, limits.bytes - held.bytes) if limits.bytes else 0
            reserve = max(reserve, need if limits.bytes else 0)
            files = files if limits.files else 0
            expires_at = utc_now() + quotas.reservation_ttl
            if self.id is None:
                row = QuotaReservation(
                    owner_id=self.owner_id, bytes=reserve, files=files, expires_at=expires_at
                )
                session.add(row)
                await session.flush()
                self.id = row.id
            else:
                row_found = await session.get(QuotaReservation, self.id)
                if row_found is None:  # swept: only after its time, so never while in use
                    raise QuotaExceeded("The upload's reserved room expired.")
                row_found.bytes, row_found.files = reserve, files
                row_found.expires_at = expires_at
        self.bytes, self.files = reserve, files

    async def release(self, session: AsyncSession) -> None:
        """Inside the transaction that stores the files: the room is theirs now."""
        if self.id is not None:
            await session.execute(delete(QuotaReservation).where(QuotaReservation.id == self.id))

    async def cancel(self) -> None:
        """The upload failed: give the room back (best effort: a row that
        cannot be deleted now expires)."""
        if self.id is None:
            return
        reservation_id, self.id = self.id, None
        database = self.quotas.database
        try:
            async with database.sessionmaker() as session, database.writing(session):
                await session.execute(
                    delete(QuotaReservation).where(QuotaReservation.id == reservation_id)
                )
        except Exception:
            pass  # the upload's own error is the one to report


class QuotaWriter:
    """A BlobWriter counting what passes into it against a reservation: the
    file when its first byte (or its end, for an empty file) comes, each
    chunk before it is written."""

    def __init__(self, inner: BlobWriter, reservation: Reservation) -> None:
        self.inner = inner
        self.reservation = reservation
        self._counted = False

    @property
    def size(self) -> int:
        return self.inner.size

    @size.setter
    def size(self, value: int) -> None:
        self.inner.size = value

    async def _count_file(self) -> None:
        if not self._counted:
            self._counted = True
            await self.reservation.take(files=1)

    async def write(self, data: bytes) -> None:
        await self._count_file()
        await self.reservation.take(bytes=len(data))
        await self.inner.write(data)

    async def seal(self) -> SealedBlob:
        await self._count_file()
        return await self.inner.seal()

    async def publish(self) -> bool:
        return await self.inner.publish()

    async def unpublish(self) -> None:
        await self.inner.unpublish()

    async def settle(self) -> None:
        await self.inner.settle()

    async def discard(self) -> None:
        await self.inner.discard()
