"""Running one claimed import: entries stream from the archive's blob into
new blobs in a thread (the event loop keeps serving), while the lease is
renewed; then every file commits together, guarded by the job's fence.

Memory is bounded by the reads (1 MiB at a time, and a 4 MiB window of the
archive for zip's random access), whatever the archive's size or its number
of entries: each entry's bytes go to a temp file as they are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from quart_app.db.engine import Database
from quart_app.db.models import ImportJob
from quart_app.errors import QuotaExceeded
from quart_app.services.archives import ArchiveLimits, ArchiveRefused, BlockReader, read_entries
from quart_app.services.imports import (
    LeaseLost,
    finish_failed,
    finish_succeeded,
    give_back,
    job_problem,
    renew,
)
from quart_app.services.incoming import IncomingFile
from quart_app.services.quotas import Quotas
from quart_app.storage import BlobStore, BlobTooLarge

WINDOW_BYTES = 4 * 1024 * 1024
log = logging.getLogger("quart_app.imports")


class Stopped(Exception):
    """The worker was told to stop (lease lost, job canceled, shutdown)."""


@dataclass
class ImportRules:
    limits: ArchiveLimits
    max_upload_bytes: int
    lease: timedelta
    keep_for: timedelta


@dataclass
class _Progress:
    entries_done: int = 0
    bytes_done: int = 0
    entries_total: int | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def values(self) -> dict[str, Any]:
        return {
            "entries_done": self.entries_done,
            "bytes_done": self.bytes_done,
            "entries_total": self.entries_total,
        }


def _content_type(name: str) -> str:
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


async def _read_window(store: BlobStore, sha256: str, start: int, size: int) -> bytes:
    reader = await store.open(sha256)
    try:
        parts = [chunk async for chunk in reader.chunks(start, start + size)]
    finally:
        reader.close()
    return b"".join(parts)


def _extract(
    loop: asyncio.AbstractEventLoop,
    store: BlobStore,
    job: ImportJob,
    rules: ImportRules,
    progress: _Progress,
    made: list[IncomingFile],
) -> None:
    """In a thread: each entry's bytes into a sealed temp blob."""
    assert job.archive_sha256 is not None
    sha = job.archive_sha256

    def call(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    window: dict[str, Any] = {"start": -1, "data": b""}

    def read_at(offset: int, size: int) -> bytes:
        start, data = window["start"], window["data"]
        if not (start <= offset and offset + size <= start + len(data)):
            length = max(size, WINDOW_BYTES)
            window["start"], window["data"] = offset, call(_read_window(store, sha, offset, length))
            start, data = window["start"], window["data"]
        return bytes(data[offset - start : offset - start + size])

    source = BlockReader(job.archive_size, read_at)
    for name, chunks in read_entries(source, job.archive_format, job.archive_size, rules.limits):
        writer = store.writer(rules.max_upload_bytes)
        item = IncomingFile(name, _content_type(name), writer, owner_id=job.owner_id)
        made.append(item)
        for chunk in chunks:
            if progress.stop.is_set():
                raise Stopped
            call(writer.write(chunk))
            progress.bytes_done += len(chunk)
        item.sealed = call(writer.seal())
        progress.entries_done += 1


async def run_job(
    database: Database, store: BlobStore, quotas: Quotas, job: ImportJob, rules: ImportRules
) -> str:
    """Run a claimed job to its end; returns what became of it."""
    progress = _Progress()
    made: list[IncomingFile] = []
    fence = job.fence

    async def keep_lease() -> None:
        while not progress.stop.is_set():
            await asyncio.sleep(rules.lease.total_seconds() / 3)
            try:
                if not await renew(database, job.id, fence, rules.lease, progress.values()):
                    progress.stop.set()  # canceled, or taken over
            except Exception:
                log.exception("could not renew the lease", extra={"import_id": job.id})

    renewing = asyncio.ensure_future(keep_lease())
    loop = asyncio.get_running_loop()
    extraction = asyncio.ensure_future(
        asyncio.to_thread(_extract, loop, store, job, rules, progress, made)
    )
    try:
        try:
            await asyncio.shield(extraction)
        except asyncio.CancelledError:
            # Shutting down: the thread stops at its next chunk (it still
            # needs this loop to get there), then the job goes back to the queue.
            progress.stop.set()
            await asyncio.wait([extraction])
            await _discard(made)
            with contextlib.suppress(Exception):
                await give_back(database, job.id, fence)
            raise
        except (ArchiveRefused, BlobTooLarge) as error:
            await _discard(made)
            if isinstance(error, ArchiveRefused):
                problem = job_problem(error.reason, error.entry)
            else:
                problem = job_problem(
                    f"the entry is larger than {rules.max_upload_bytes} bytes",
                    made[-1].filename if made else None,
                )
            await finish_failed(database, store, job.id, fence, problem, rules.keep_for)
            return "failed"
        except Stopped:
            await _discard(made)
            return "stopped"
        except BaseException:
            # Storage or database trouble: nothing kept; the lease lapses and
            # the job runs again.
            await _discard(made)
            raise
        progress.entries_total = progress.entries_done
        try:
            await finish_succeeded(
                database,
                store,
                quotas,
                job.id,
                fence,
                job.owner_id,
                made,
                progress.values(),
                rules.keep_for,
            )
        except LeaseLost:
            await _discard(made)
            return "stopped"
        except QuotaExceeded as error:
            await _discard(made)
            problem = job_problem(error.detail, None, QuotaExceeded.code)
            await finish_failed(database, store, job.id, fence, problem, rules.keep_for)
            return "failed"
        except BaseException:
            await _discard(made)
            raise
        return "succeeded"
    finally:
        progress.stop.set()
        renewing.cancel()
        with contextlib.suppress(BaseException):
            await renewing


async def _discard(made: list[IncomingFile]) -> None:
    for item in made:
        with contextlib.suppress(Exception):
            await item.writer.discard()
