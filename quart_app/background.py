"""Background work of a serving process: the sweep of expired uploads.
Started in before_serving, cancelled in after_serving."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from quart import Quart

from .config import Settings
from .models import utc_now
from .services.uploads import sweep_expired

log = logging.getLogger("quart_app.background")


async def _sweep_loop(app: Quart, every: float) -> None:
    while True:
        try:
            removed = await sweep_expired(
                app.extensions["database"], app.extensions["blob_store"], utc_now()
            )
            if removed:
                log.info("expired uploads removed", extra={"count": removed})
        except Exception:
            log.exception("sweeping expired uploads failed; retrying at the next sweep")
        await asyncio.sleep(every)


def init_app(app: Quart, settings: Settings) -> None:
    @app.before_serving
    async def _start() -> None:
        app.extensions["sweeper"] = asyncio.ensure_future(
            _sweep_loop(app, settings.UPLOAD_SWEEP_SECONDS)
        )

    @app.after_serving
    async def _stop() -> None:
        task = app.extensions.pop("sweeper", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
