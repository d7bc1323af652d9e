"""Archive imports: durable jobs, claimed with a lease and a fencing token.

A job is a row. ``POST /imports`` stores the archive as a blob and queues
the job in one transaction. A worker claims the oldest job that is queued,
or running with a lapsed lease (its worker died), in a write transaction
that also adds one to ``fence``; every later write of that worker (progress,
lease renewal, the result) is guarded by ``WHERE fence = <its fence> AND
status = 'running'``. A worker that lost its job (lease taken over, job
canceled) writes nothing, and the result (the batch with every file, the
job's new status) commits in one transaction or not at all: each job ends
exactly once.

The archive's bytes are released when the job ends (succeeded, failed or
canceled): they are no longer needed, and a blob no file or job refers to is
retired like any other.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from quart_app.db.engine import Database
from quart_app.db.keyset import keyset_page
from quart_app.db.models import Batch, File, ImportJob, utc_now
from quart_app.errors import Conflict, NotFound
from quart_app.services.accounts import Access
from quart_app.services.files import blob_transaction, new_id
from quart_app.services.incoming import IncomingFile, reservations_of
from quart_app.services.quotas import Quotas
from quart_app.storage import BlobStore

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "canceled",
)
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELED})


class LeaseLost(Exception):
    """The job is no longer this worker's (lease taken over, or canceled)."""


async def create_job(
    database: Database,
    store: BlobStore,
    owner_id: int,
    archive: IncomingFile,
    archive_format: str,
    expires_in: timedelta,
    before_commit: Any = None,
) -> ImportJob:
    """Store the sealed archive and queue its job, together."""
    assert archive.sealed is not None
    async with blob_transaction(database, store) as (session, changes):
        await changes.keep(session, [archive])
        # The archive counted against the quota while it arrived; from here
        # its files will, when the job commits them.
        for reservation in reservations_of([archive]):
            await reservation.release(session)
        now = utc_now()
        job = ImportJob(
            id=new_id(),
            owner_id=owner_id,
            status=QUEUED,
            filename=archive.filename,
            archive_format=archive_format,
            archive_size=archive.sealed.size,
            archive_sha256=archive.sealed.sha256,
            fence=0,
            attempts=0,
            entries_done=0,
            bytes_done=0,
            created_at=now,
            expires_at=now + expires_in,
        )
        session.add(job)
        await session.flush()
        if before_commit is not None:
            await before_commit(session, job)
    return job


async def get_job(session: AsyncSession, access: Access, job_id: str) -> ImportJob:
    job = await session.scalar(select(ImportJob).where(ImportJob.id == job_id))
    if job is None or not access.owns(job.owner_id):
        raise NotFound(f"There is no import {job_id}.")
    return job


async def list_jobs(
    session: AsyncSession, access: Access, after: int, limit: int
) -> tuple[list[ImportJob], bool]:
    return await keyset_page(
        session, ImportJob, ImportJob.seq, after, limit, where=access.owned(ImportJob.owner_id)
    )


async def cancel_job(
    database: Database, store: BlobStore, access: Access, job_id: str, keep_for: timedelta
) -> ImportJob:
    """Cancel a queued or running job: nothing of it remains (a running
    worker's result can no longer commit: the fence moves). 409 once it ended."""
    async with blob_transaction(database, store) as (session, changes):
        job = await get_job(session, access, job_id)
        if job.status in FINISHED:
            raise Conflict(f"The import {job_id} has already ended ({job.status}).")
        now = utc_now()
        job.status, job.fence, job.lease_until = CANCELED, job.fence + 1, None
        job.finished_at, job.expires_at = now, now + keep_for
        sha, job.archive_sha256 = job.archive_sha256, None
        await session.flush()
        if sha is not None:
            await changes.release(session, sha)
    return job


async def claim_next(database: Database, lease: timedelta) -> ImportJob | None:
    """Take the oldest job that is queued, or running with a lapsed lease.
    An idle poll is a read: the write transaction (the write lock, on SQLite)
    is taken only when there is a job to claim."""
    now = utc_now()
    claimable = or_(
        ImportJob.status == QUEUED,
        (ImportJob.status == RUNNING) & (ImportJob.lease_until < now),
    )
    async with database.sessionmaker() as session:
        if await session.scalar(select(ImportJob.seq).where(claimable).limit(1)) is None:
            return None
    async with database.sessionmaker() as session, database.writing(session):
        query = select(ImportJob).where(claimable).order_by(ImportJob.seq).limit(1)
        if not database.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        job = await session.scalar(query)
        if job is None:
            return None
        job.status, job.fence, job.attempts = RUNNING, job.fence + 1, job.attempts + 1
        job.lease_until = now + lease
        job.started_at = job.started_at or now
        job.entries_done, job.entries_total, job.bytes_done = 0, None, 0
        await session.flush()
        session.expunge(job)
    return job


def _fenced(job_id: str, fence: int) -> Any:
    return (ImportJob.id == job_id) & (ImportJob.fence == fence) & (ImportJob.status == RUNNING)


async def renew(
    database: Database, job_id: str, fence: int, lease: timedelta, progress: dict[str, Any]
) -> bool:
    """Extend the lease and note progress; False when the job is no longer ours."""
    async with database.sessionmaker() as session, database.writing(session):
        result = await session.execute(
            update(ImportJob)
            .where(_fenced(job_id, fence))
            .values(lease_until=utc_now() + lease, **progress)
        )
    return bool(getattr(result, "rowcount", 0))


async def give_back(database: Database, job_id: str, fence: int) -> None:
    """Return a job to the queue (a server shutting down mid-job)."""
    async with database.sessionmaker() as session, database.writing(session):
        await session.execute(
            update(ImportJob)
            .where(_fenced(job_id, fence))
            .values(status=QUEUED, lease_until=None, fence=ImportJob.fence + 1)
        )


async def finish_failed(
    database: Database,
    store: BlobStore,
    job_id: str,
    fence: int,
    problem: dict[str, Any],
    keep_for: timedelta,
) -> bool:
    async with blob_transaction(database, store) as (session, changes):
        job = await session.scalar(select(ImportJob).where(_fenced(job_id, fence)))
        if job is None:
            return False
        now = utc_now()
        job.status, job.problem, job.lease_until = FAILED, json.dumps(problem), None
        job.finished_at, job.expires_at = now, now + keep_for
        sha, job.archive_sha256 = job.archive_sha256, None
        await session.flush()
        if sha is not None:
            await changes.release(session, sha)
    return True


async def finish_succeeded(
    database: Database,
    store: BlobStore,
    quotas: Quotas,
    job_id: str,
    fence: int,
    owner_id: int,
    files: list[IncomingFile],
    progress: dict[str, Any],
    keep_for: timedelta,
) -> Batch:
    """Every file, their batch and the job's end, in one transaction guarded
    by the fence (LeaseLost, and nothing stored, when the job is not ours)."""
    async with blob_transaction(database, store) as (session, changes):
        job = await session.scalar(select(ImportJob).where(_fenced(job_id, fence)))
        if job is None:
            raise LeaseLost(job_id)
        sizes = [item.sealed.size for item in files if item.sealed is not None]
        await quotas.check_room(session, owner_id, sum(sizes), len(sizes))
        batch = Batch(id=new_id(), owner_id=owner_id, created_at=utc_now())
        session.add(batch)
        await changes.keep(session, files)
        now = utc_now()
        session.add_all(
            File(
                id=new_id(),
                owner_id=owner_id,
                filename=item.filename,
                content_type=item.content_type,
                size=item.sealed.size,
                sha256=item.sealed.sha256,
                batch_id=batch.id,
                created_at=now,
                updated_at=now,
            )
            for item in files
            if item.sealed is not None
        )
        job.status, job.batch_id, job.lease_until = SUCCEEDED, batch.id, None
        job.finished_at, job.expires_at = now, now + keep_for
        for name, value in progress.items():
            setattr(job, name, value)
        sha, job.archive_sha256 = job.archive_sha256, None
        await session.flush()
        if sha is not None:
            await changes.release(session, sha)
    return batch


async def sweep_expired_jobs(database: Database, store: BlobStore, now: datetime) -> int:
    """Remove jobs past their expiry: ended ones (their files stay), and
    queued ones no worker took in time (their archive goes)."""
    async with database.sessionmaker() as session:
        expired = list(
            await session.scalars(
                select(ImportJob.id)
                .where(ImportJob.expires_at <= now, ImportJob.status != RUNNING)
                .limit(1000)
            )
        )
    for job_id in expired:
        async with blob_transaction(database, store) as (session, changes):
            job = await session.scalar(select(ImportJob).where(ImportJob.id == job_id))
            if job is None or job.status == RUNNING:
                continue
            sha = job.archive_sha256
            await session.delete(job)
            await session.flush()
            if sha is not None:
                await changes.release(session, sha)
    return len(expired)


async def queue_state(session: AsyncSession) -> tuple[int, datetime | None]:
    """Jobs queued and not yet claimed by a worker, and when the oldest of
    them was created (None: none queued). One indexed read (status)."""
    query = select(func.count(), func.min(ImportJob.created_at)).where(ImportJob.status == QUEUED)
    depth, oldest = (await session.execute(query)).one()
    return int(depth), oldest


def job_problem(detail: str, entry: str | None, code: str = "import-failed") -> dict[str, Any]:
    """What a failed import keeps of its problem: its type's code, the
    detail and the entry (the edge renders the RFC 9457 document)."""
    return {"code": code, "detail": detail, "entry": entry}
