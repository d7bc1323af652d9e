"""Background work of a serving process: removing expired resumable uploads
and download links and quota reservations, and purging Idempotency-Key records
past their time to live, while the app serves; ``python -m quart_app`` runs
the same work on demand."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from quart_app.db.models import utc_now
from quart_app.services.download_links import sweep_expired_links
from quart_app.services.idempotency import purge_expired
from quart_app.services.imports import sweep_expired_jobs
from quart_app.services.resumable_uploads import sweep_expired

if TYPE_CHECKING:
    from quart_app.state import AppState

log = logging.getLogger("quart_app.background")


async def sweep_once(state: AppState) -> None:
    database = state.database
    now = utc_now()
    removed = await sweep_expired(database, state.store, now)
    links = await sweep_expired_links(database, now)
    purged = await purge_expired(
        database, now - timedelta(seconds=state.settings.IDEMPOTENCY_TTL_SECONDS)
    )
    jobs = await sweep_expired_jobs(database, state.store, now)
    reservations = await state.quotas.sweep_expired(now)
    keys = await state.keys.flush_used()
    if removed or links or purged or jobs or reservations:
        log.info(
            "swept",
            extra={
                "expired_uploads": removed,
                "idempotency_records": purged,
                "import_jobs": jobs,
                "quota_reservations": reservations,
                "expired_links": links,
            },
        )
    if keys:
        log.debug("noted key use", extra={"keys": keys})


async def sweep_loop(state: AppState, stop: asyncio.Event) -> None:
    """Sweep every UPLOAD_SWEEP_SECONDS until ``stop`` is set. Stopped
    between sweeps, never cancelled inside one: a sweep cancelled mid-query
    would abandon its pooled connection."""
    while not stop.is_set():
        try:
            await sweep_once(state)
        except Exception:
            log.exception("the sweep failed; it runs again at the next interval")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), state.settings.UPLOAD_SWEEP_SECONDS)
