"""Integrity: crash recovery at startup, and the full check (``python -m
quart_app check [--repair]``).

Recovery at startup settles what a crash left in the storage layout (each
backend says what and how: storage/local/recovery.py, storage/s3/recovery.py),
deciding by the rows in the database. ``check`` reads every stored file and
finds any other orphan by a full scan; ``--repair`` removes it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sqlalchemy import select

from quart_app.db.engine import Database
from quart_app.db.models import Blob, File, Upload, utc_now
from quart_app.storage import MaintainedStore

TEMP_GRACE_SECONDS = 60.0


@dataclass
class Report:
    checked_files: int = 0
    missing_bytes: list[str] = field(default_factory=list)  # file ids; never deleted
    corrupt_bytes: list[str] = field(default_factory=list)  # file ids; never deleted
    orphan_blobs: list[str] = field(default_factory=list)  # sha256s without a row
    unused_blob_rows: list[str] = field(default_factory=list)  # blob rows no file uses
    stale_temp_files: list[str] = field(default_factory=list)
    trash_files: list[str] = field(default_factory=list)
    orphan_partials: list[str] = field(default_factory=list)  # no live upload row
    # Live uploads whose partial lacks bytes below their committed offset:
    # they cannot go on; a person ends them (DELETE) or the expiry does.
    missing_partials: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        """Rows whose bytes are gone or wrong: only a person can decide."""
        return bool(self.missing_bytes or self.corrupt_bytes or self.missing_partials)

    @property
    def clean(self) -> bool:
        return not (
            self.damaged
            or self.orphan_blobs
            or self.unused_blob_rows
            or self.stale_temp_files
            or self.trash_files
            or self.orphan_partials
        )


async def recover(database: Database, store: MaintainedStore, temp_max_age: float) -> list[str]:
    """The cheap part, run at startup: settle trash and publishing markers,
    drop abandoned temp files.

    Trash is settled inside an exclusive write transaction: no writer, in
    any process or server, is half-way through one then, so what is in
    trash is a crash's leftover."""
    async with database.sessionmaker() as session, database.writing(session, exclusive=True):

        async def has_row(sha256: str) -> bool:
            return await session.get(Blob, sha256) is not None

        done = await store.settle_leftovers(temp_max_age, has_row)
    return done + await store.remove_abandoned_temps(temp_max_age)


async def _verify_in_row(database: Database, sha256: str) -> tuple[str, int] | None:
    """(sha256, size) of a blob kept in its row (read one at a time: never
    every blob's bytes in memory at once)."""
    async with database.sessionmaker() as session:
        content = await session.scalar(select(Blob.content).where(Blob.sha256 == sha256))
    if content is None:
        return None
    return hashlib.sha256(content).hexdigest(), len(content)


async def check(
    database: Database, store: MaintainedStore, temp_max_age: float, repair: bool
) -> Report:
    """Every file row's bytes exist with the right size and sha256; list
    orphans; with ``repair``, remove orphans (never rows)."""
    report = Report()
    if repair:
        report.repaired += await recover(database, store, temp_max_age)
    async with database.sessionmaker() as session:
        files = list(await session.execute(select(File.id, File.sha256, File.size)))
        blob_rows = set(await session.scalars(select(Blob.sha256)))
        in_row = set(await session.scalars(select(Blob.sha256).where(Blob.content.is_not(None))))
        live = select(Upload.id, Upload.offset).where(
            Upload.completed_at.is_(None), Upload.expires_at > utc_now()
        )
        live_offsets = {upload_id: offset for upload_id, offset in await session.execute(live)}
    live_uploads = set(live_offsets)
    verified: dict[str, tuple[str, int] | None] = {}
    for file_id, sha256, size in files:
        report.checked_files += 1
        if sha256 in in_row and sha256 not in verified:
            verified[sha256] = await _verify_in_row(database, sha256)
        if sha256 not in verified:
            verified[sha256] = await store.digest(sha256)
        found = verified[sha256]
        if found is None:
            report.missing_bytes.append(file_id)
        elif found != (sha256, size):
            report.corrupt_bytes.append(file_id)
    used = {sha256 for _, sha256, _ in files}
    report.unused_blob_rows = sorted(blob_rows - used)
    report.orphan_blobs = sorted(await store.blob_names() - blob_rows)
    report.stale_temp_files = await store.abandoned_temps(temp_max_age)
    report.trash_files = await store.trash_names()
    report.orphan_partials = await store.stale_partials(live_uploads, temp_max_age)
    report.missing_partials = await _missing_partials(database, store, live_offsets)
    if repair:
        await _repair(database, store, report)
    return report


async def _missing_partials(
    database: Database, store: MaintainedStore, live_offsets: dict[str, int]
) -> list[str]:
    """Live uploads whose partial lacks committed bytes. Those that look so
    are looked at again inside an exclusive write transaction, when no
    PATCH is half-way through its commit (a completion moves the partial
    to a blob before its row commits; a PATCH drops the older tail)."""
    suspects = [
        (upload_id, offset)
        for upload_id, offset in sorted(live_offsets.items())
        if not await store.partial_intact(upload_id, offset)
    ]
    if not suspects:
        return []
    missing = []
    async with database.sessionmaker() as session, database.writing(session, exclusive=True):
        for upload_id, _ in suspects:
            row = await session.get(Upload, upload_id)
            if row is None or row.completed_at is not None:
                continue
            if not await store.partial_intact(upload_id, row.offset):
                missing.append(upload_id)
    return missing


async def _repair(database: Database, store: MaintainedStore, report: Report) -> None:
    """Inside one exclusive write transaction: no upload, in any server, is
    between publishing its blob and committing its row, so a blob without a
    row is truly orphaned. Rows are re-read here; bytes under a row are
    never removed."""
    async with database.sessionmaker() as session, database.writing(session, exclusive=True):
        for sha256 in report.orphan_blobs:
            if await session.get(Blob, sha256) is None:
                await store.remove_blob(sha256)
                report.repaired.append(f"removed orphan blob {sha256}")
        for sha256 in report.unused_blob_rows:
            used = await session.scalar(select(File.id).where(File.sha256 == sha256).limit(1))
            blob = await session.get(Blob, sha256)
            if used is None and blob is not None:
                await session.delete(blob)
                await store.remove_blob(sha256)
                report.repaired.append(f"removed unused blob {sha256}")
    for name in report.orphan_partials:
        await store.remove_partial(name)
        report.repaired.append(f"removed orphan partial upload {name}")
    report.orphan_blobs, report.unused_blob_rows, report.orphan_partials = [], [], []
    report.stale_temp_files, report.trash_files = [], []
