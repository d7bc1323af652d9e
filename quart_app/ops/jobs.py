"""Import workers: IMPORT_WORKERS tasks per serving process, each claiming
one queued job at a time (services/imports.py) and running it
(services/import_runs.py). A stop between jobs is immediate; a stop during
one gives the job back to the queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import TYPE_CHECKING

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


async def import_worker(state: AppState, wake: asyncio.Event) -> None:
    """Claim and run jobs until cancelled."""
    rules = import_rules(state)
    while True:
        try:
            job = await claim_next(state.database, rules.lease)
        except Exception:
            log.exception("could not look for import jobs")
            job = None
        if job is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), state.settings.IMPORT_POLL_SECONDS)
            wake.clear()
            continue
        try:
            outcome = await run_job(state.database, state.store, state.quotas, job, rules)
            log.info("import ended", extra={"import_id": job.id, "outcome": outcome})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("import interrupted; it runs again", extra={"import_id": job.id})
