"""Integrity: crash recovery at startup, and the full check (``python -m
quart_app check [--repair]``).

What a crash can leave, and what undoes it:

- ``trash/<sha256>.<token>``: a blob retired inside a transaction. If the
  process died before that transaction committed, SQLite rolled the rows
  back and the blob row still stands: the bytes must go back to their
  address. If it committed, the bytes are garbage. Recovery decides by the
  blob row, so it is right either way.
- ``tmp/<pid>-*.part``: an upload in flight. Removed when its process is
  gone, or when older than the longest a body may take (BODY_DEADLINE), so
  a cleanup never touches another live worker's upload.
- a published blob without its row (died between rename and commit): the
  ``tmp/<pid>-publishing-<sha256>`` marker left with it names it, so the
  bytes are removed at startup if no row has that sha256. ``check`` finds
  any other orphan by a full scan; ``--repair`` removes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from quart_app.db.engine import Database
from quart_app.db.models import Blob, File, Upload, utc_now
from quart_app.storage.local import READ_CHUNK_BYTES, LocalBlobStore

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
    repaired: list[str] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        """Rows whose bytes are gone or wrong: only a person can decide."""
        return bool(self.missing_bytes or self.corrupt_bytes)

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


def _stale(path: Path, older_than: float) -> bool:
    try:
        return path.stat().st_mtime < time.time() - older_than
    except FileNotFoundError:
        return False


def _owner_gone(path: Path) -> bool:
    """A temp file named ``<pid>-...`` whose process no longer exists."""
    pid = path.name.split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _abandoned(path: Path, older_than: float) -> bool:
    return _owner_gone(path) or _stale(path, older_than)


async def recover(database: Database, store: LocalBlobStore, temp_max_age: float) -> list[str]:
    """The cheap part, run at startup: settle trash, drop stale temp files.

    Trash is settled inside a write transaction: no writer, in any process,
    is half-way through one then, so what is in trash is a crash's leftover."""
    done: list[str] = []
    async with database.sessionmaker() as session, database.writing(session):
        for path in sorted(store.trash.iterdir()):
            sha256 = path.name.split(".", 1)[0]
            target = store.path_for(sha256) if len(sha256) == 64 else None
            has_row = target is not None and await session.get(Blob, sha256) is not None
            if target is not None and has_row and not target.exists():
                await asyncio.to_thread(store.make_parents, target)
                await asyncio.to_thread(os.rename, path, target)
                done.append(f"restored blob {sha256} from trash (its transaction never committed)")
            else:
                await asyncio.to_thread(path.unlink, True)
                done.append(f"purged trash {path.name}")
        for marker in sorted(store.tmp.glob("*-publishing-*")):
            if not _abandoned(marker, temp_max_age):
                continue  # its transaction may still be running
            sha256 = marker.name.rsplit("-", 1)[1]
            if len(sha256) == 64 and await session.get(Blob, sha256) is None:
                await asyncio.to_thread(store.path_for(sha256).unlink, True)
                done.append(f"removed blob {sha256}: published, but its row never committed")
            await asyncio.to_thread(marker.unlink, True)
    for path in sorted(store.tmp.iterdir()):
        if _abandoned(path, temp_max_age):
            await asyncio.to_thread(path.unlink, True)
            done.append(f"removed abandoned temp file {path.name}")
    return done


def _sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


async def check(
    database: Database, store: LocalBlobStore, temp_max_age: float, repair: bool
) -> Report:
    """Every file row's bytes exist with the right size and sha256; list
    orphans; with ``repair``, remove orphans (never rows)."""
    report = Report()
    if repair:
        report.repaired += await recover(database, store, temp_max_age)
    async with database.sessionmaker() as session:
        files = list(await session.execute(select(File.id, File.sha256, File.size)))
        blob_rows = set(await session.scalars(select(Blob.sha256)))
        live_uploads = set(
            await session.scalars(
                select(Upload.id).where(
                    Upload.completed_at.is_(None), Upload.expires_at > utc_now()
                )
            )
        )
    verified: dict[str, tuple[str, int] | None] = {}
    for file_id, sha256, size in files:
        report.checked_files += 1
        if sha256 not in verified:
            path = store.path_for(sha256)
            verified[sha256] = await asyncio.to_thread(_sha256_of, path) if path.exists() else None
        found = verified[sha256]
        if found is None:
            report.missing_bytes.append(file_id)
        elif found != (sha256, size):
            report.corrupt_bytes.append(file_id)
    used = {sha256 for _, sha256, _ in files}
    report.unused_blob_rows = sorted(blob_rows - used)
    on_disk = {p.name for p in store.blobs.rglob("*") if p.is_file()}
    report.orphan_blobs = sorted(on_disk - blob_rows)
    report.stale_temp_files = sorted(
        p.name for p in store.tmp.iterdir() if _abandoned(p, temp_max_age)
    )
    report.trash_files = sorted(p.name for p in store.trash.iterdir())
    # Age-gated: a partial file exists a moment before its upload's row.
    report.orphan_partials = sorted(
        p.name
        for p in store.partial.iterdir()
        if p.name not in live_uploads and _stale(p, temp_max_age)
    )
    if repair:
        await _repair(database, store, report)
    return report


async def _repair(database: Database, store: LocalBlobStore, report: Report) -> None:
    """Inside one write transaction: no upload is between publishing its
    blob and committing its row, so a blob without a row is truly orphaned.
    Rows are re-read here; bytes under a row are never removed."""
    async with database.sessionmaker() as session, database.writing(session):
        for sha256 in report.orphan_blobs:
            if await session.get(Blob, sha256) is None:
                await asyncio.to_thread(store.path_for(sha256).unlink, True)
                report.repaired.append(f"removed orphan blob {sha256}")
        for sha256 in report.unused_blob_rows:
            used = await session.scalar(select(File.id).where(File.sha256 == sha256).limit(1))
            blob = await session.get(Blob, sha256)
            if used is None and blob is not None:
                await session.delete(blob)
                await asyncio.to_thread(store.path_for(sha256).unlink, True)
                report.repaired.append(f"removed unused blob {sha256}")
    for name in report.orphan_partials:
        await asyncio.to_thread((store.partial / name).unlink, True)
        report.repaired.append(f"removed orphan partial upload {name}")
    report.orphan_blobs, report.unused_blob_rows, report.orphan_partials = [], [], []
    report.stale_temp_files, report.trash_files = [], []
