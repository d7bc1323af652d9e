"""``GET /metrics``: the Prometheus text (quart_app/metrics.py), for an admin key."""

from __future__ import annotations

import asyncio
import logging

from quart import Blueprint, Response
from quart_schema import document_response
from sqlalchemy.exc import SQLAlchemyError

from quart_app import metrics
from quart_app.db.models import utc_now
from quart_app.edge.authentication import requires
from quart_app.edge.openapi import problems
from quart_app.edge.schemas import MetricsText
from quart_app.errors import DomainError
from quart_app.services.imports import queue_state
from quart_app.state import app_state

blueprint = Blueprint("metrics", __name__)
log = logging.getLogger("quart_app.metrics")


async def _import_queue() -> metrics.ImportQueue | None:
    """The queue as the database has it now; None when it cannot say in
    time (the rest of the scrape is still worth having)."""
    state = app_state()
    try:
        async with asyncio.timeout(state.settings.DATABASE_TIMEOUT):
            async with state.database.sessionmaker() as session:
                depth, oldest = await queue_state(session)
    except (SQLAlchemyError, DomainError, TimeoutError) as error:
        log.warning("metrics: the import queue could not be read: %s", error)
        return None
    age = 0.0 if oldest is None else max(0.0, (utc_now() - oldest).total_seconds())
    return metrics.ImportQueue(depth, age)


@blueprint.get("/metrics")
@requires("admin")
@document_response(MetricsText)
@problems(401, 403)
async def scrape() -> Response:
    """Every metric in Prometheus' text format, added up over the server's
    workers (README "Metrics"). Needs an admin key."""
    queue = await _import_queue()
    text = await asyncio.to_thread(metrics.exposition, queue)
    return Response(text, content_type=metrics.CONTENT_TYPE)
