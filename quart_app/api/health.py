"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

from quart import Blueprint, Response, current_app, jsonify
from quart_schema import document_response

from ..db import get_database, ping
from ..problems import problem_response
from ..schemas import Health
from .context import settings
from .openapi import problems

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
@document_response(Health)
async def healthz() -> Response:
    """The process is alive and serving."""
    return jsonify({"status": "ok"})


def _probe_storage(directory: Path) -> None:
    probe = directory / f".readyz-{secrets.token_hex(8)}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"ok")
    finally:
        os.close(fd)
        probe.unlink()


@blueprint.get("/readyz")
@document_response(Health)
@problems(503)
async def readyz() -> Response:
    """The database answers and the storage directory is writable."""
    try:
        await ping(get_database())
    except Exception as error:
        current_app.logger.warning("readyz: database check failed: %r", error)
        return problem_response(503, detail="The database is not reachable.")
    try:
        await asyncio.to_thread(_probe_storage, settings().STORAGE_DIR)
    except OSError as error:
        current_app.logger.warning("readyz: storage check failed: %r", error)
        return problem_response(503, detail="The storage directory is not writable.")
    return jsonify({"status": "ready"})
