"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from quart import Blueprint, Response, current_app, jsonify
from quart_schema import document_response

from quart_app.edge.authentication import public
from quart_app.edge.openapi import problems
from quart_app.edge.schemas import Health
from quart_app.errors import DatabaseUnavailable, StorageUnavailable
from quart_app.state import app_state
from quart_app.storage import StorageFull, StorageUnwritable

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
@public
@document_response(Health)
async def healthz() -> Response:
    """The process is alive and serving."""
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
@public
@document_response(Health)
@problems(503)
async def readyz() -> Response:
    """The database would take a write now (on SQLite: its write lock is
    free and its file is the one being served) and the storage directory is
    writable. Each check waits at most QUART_APP_DATABASE_TIMEOUT."""
    try:
        await app_state().database.probe()
    except Exception as error:  # DBAPIError, DatabaseUnavailable, a pool giving up
        current_app.logger.warning("readyz: database check failed: %r", error)
        raise DatabaseUnavailable("The database is not reachable.") from None
    try:
        await asyncio.wait_for(app_state().store.probe(), app_state().settings.DATABASE_TIMEOUT)
    except (OSError, StorageUnwritable, StorageFull, TimeoutError) as error:
        current_app.logger.warning("readyz: storage check failed: %r", error)
        raise StorageUnavailable("The storage directory is not writable.") from None
    return jsonify({"status": "ready"})
