"""Import workers: IMPORT_WORKERS tasks per serving process, each claiming
one queued job at a time (services/imports.py) and running it
(services/import_runs.py). A stop between jobs is immediate; a stop during
one gives the job back to the queue."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from quart_app.services.archives import ArchiveLimits
from quart_app.services.import_runs import ImportRules, run_job
from quart_app.services.imports import claim_next

if TYPE_CHECKING:
    from quart_app.state import AppState

log = logging.getLogger("quart_app.imports")


def import_rules(state: AppState) -> ImportRules:
    settings = state.settings
    return ImportRules(
        limits=ArchiveLimits(
            max_entries=settings.IMPORT_MAX_ENTRIES,
            max_entry_bytes=settings.MAX_UPLOAD_BYTES,
            max_total_bytes=settings.IMPORT_MAX_TOTAL_BYTES,
            max_ratio=settings.IMPORT_MAX_RATIO,
            max_name_chars=settings.MAX_FILENAME_CHARS,
        ),
        max_upload_bytes=settings.MAX_UPLOAD_BYTES,
        lease=timedelta(seconds=settings.IMPORT_LEASE_SECONDS),
        keep_for=timedelta(seconds=settings.IMPORT_EXPIRES_SECONDS),
    )


async def import_worker(state: AppState, wake: asyncio.Event, stop: asyncio.Event) -> None:
    """Claim and run jobs until ``stop`` is set. Never cancelled inside a
    database transaction (that would abandon its pooled connection mid-way):
    a stop between jobs ends the loop after the current claim; a stop during
    a job cancels the job alone, which gives it back to the queue."""
    rules = import_rules(state)
    while not stop.is_set():
        try:
            job = await claim_next(state.database, rules.lease)
        except Exception:
            log.exception("could not look for import jobs")
            job = None
        if job is None:
            await _first_of(stop.wait(), wake.wait(), within=state.settings.IMPORT_POLL_SECONDS)
            wake.clear()
            continue
        running = asyncio.ensure_future(
            run_job(state.database, state.store, state.quotas, job, rules)
        )
        await _first_of(asyncio.shield(running), stop.wait())
        if not running.done():
            running.cancel()
        try:
            outcome = await running
            log.info("import ended", extra={"import_id": job.id, "outcome": outcome})
        except asyncio.CancelledError:
            if not stop.is_set():
                raise
        except Exception:
            log.exception("import interrupted; it runs again", extra={"import_id": job.id})


async def _first_of(*waits: Any, within: float | None = None) -> None:
    """Until the first of these ends (or ``within`` seconds); the others are dropped."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
