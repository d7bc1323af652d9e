"""Background work of a serving process: removing expired resumable uploads
and purging Idempotency-Key records past their time to live, while the app
serves; ``python -m quart_app`` runs the same work on demand."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from datetime import timedelta

from quart import Quart

from quart_app.config import Settings
from quart_app.db.models import utc_now
from quart_app.services.idempotency import purge_expired
from quart_app.services.uploads import sweep_expired

log = logging.getLogger("quart_app.background")


async def sweep_once(app: Quart, settings: Settings) -> None:
    database = app.extensions["database"]
    now = utc_now()
    removed = await sweep_expired(database, app.extensions["blob_store"], now)
    purged = await purge_expired(
        database, now - timedelta(seconds=settings.IDEMPOTENCY_TTL_SECONDS)
    )
    if removed or purged:
        log.info("swept", extra={"expired_uploads": removed, "idempotency_records": purged})


async def _sweep_loop(app: Quart, settings: Settings, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await sweep_once(app, settings)
        except Exception:
            log.exception("the sweep failed; it runs again at the next interval")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.UPLOAD_SWEEP_SECONDS)


def init_app(app: Quart, settings: Settings) -> None:
    @app.while_serving
    async def _sweeper() -> AsyncGenerator[None, None]:
        # while_serving: started after every before_serving function (the
        # database is open) and stopped before any after_serving one (the
        # database is still open). Stopped between sweeps, never cancelled
        # inside one: a sweep cancelled mid-query would abandon its
        # pooled connection.
        stop = asyncio.Event()
        task = asyncio.ensure_future(_sweep_loop(app, settings, stop))
        yield
        stop.set()
        await task
