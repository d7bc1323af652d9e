"""Background work of a serving process: removing expired resumable uploads
and purging Idempotency-Key records past their time to live. Started in
before_serving, cancelled in after_serving; ``python -m quart_app`` runs
the same work on demand."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from quart import Quart

from .config import Settings
from .models import utc_now
from .services.idempotency import purge_expired
from .services.uploads import sweep_expired

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


async def _sweep_loop(app: Quart, settings: Settings) -> None:
    while True:
        try:
            await sweep_once(app, settings)
        except Exception:
            log.exception("the sweep failed; it runs again at the next interval")
        await asyncio.sleep(settings.UPLOAD_SWEEP_SECONDS)


def init_app(app: Quart, settings: Settings) -> None:
    @app.before_serving
    async def _start() -> None:
        app.extensions["sweeper"] = asyncio.ensure_future(_sweep_loop(app, settings))

    @app.after_serving
    async def _stop() -> None:
        task = app.extensions.pop("sweeper", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
