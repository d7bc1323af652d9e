"""RFC 9457 problem details: the handlers that render every error.

Every 4xx/5xx leaves as ``application/problem+json``: domain errors (their
type, status and title come from their class: errors.py is the one table),
the HTTP errors Quart and Werkzeug raise themselves (mapped to the domain
error for the same condition, so a 404 from routing and a 404 from a view
have one type), request-validation errors, and unexpected exceptions (a 500
whose body says nothing of the internals; the traceback goes to the log
with the request id). A Werkzeug error with no domain counterpart keeps
``about:blank`` and its standard phrase.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from quart import Quart, Response, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from quart_app import errors
from quart_app.db.engine import database_fault
from quart_app.edge.access_log import logged_path
from quart_app.edge.bodies import ClientDisconnected
from quart_app.edge.problem_details import (
    BLANK_TYPE,
    PROBLEM_CONTENT_TYPE,
    problem_document,
    problem_headers,
    status_phrase,
)
from quart_app.errors import DomainError, InsufficientStorage, StorageUnavailable
from quart_app.storage import StorageFull, StorageUnwritable

log = logging.getLogger("quart_app.errors")

# The status of an error Quart or Werkzeug raises -> our error for the same
# condition. The type, title and status then come from our table; the
# exception's description becomes the detail and its headers (Allow on 405)
# are kept.
SAME_CONDITION: dict[int, type[DomainError]] = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    408: errors.RequestTimeout,
    412: errors.PreconditionFailed,
    413: errors.TooLarge,
    414: errors.TargetTooLong,
    415: errors.UnsupportedMediaType,
    416: errors.RangeNotSatisfiable,
    431: errors.HeadersTooLarge,
}


class Problem(BaseModel):
    """An RFC 9457 problem. ``errors`` appears for field-level validation."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


def _response(document: dict[str, Any], status: int, headers: Mapping[str, str]) -> Response:
    response = Response(json.dumps(document), status=status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in headers.items():
        response.headers[name] = value
    return response


def domain_problem(error: DomainError) -> Response:
    return _response(problem_document(error), error.status, problem_headers(error))


def blank_problem(
    status: int, detail: str | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    """A problem with no type of ours: ``about:blank`` and the status's phrase."""
    phrase = status_phrase(status)
    document = {"type": BLANK_TYPE, "title": phrase, "status": status, "detail": detail or phrase}
    return _response(document, status, headers or {})


def http_problem(error: HTTPException) -> Response:
    status = error.code or 500
    # Keep what the exception says must go with it (Allow on 405,
    # WWW-Authenticate, Retry-After), but not its HTML content type.
    headers = {
        name: value
        for name, value in error.get_headers()
        if name.lower() not in ("content-type", "content-length")
    }
    description = error.description if isinstance(error.description, str) else None
    same = SAME_CONDITION.get(status)
    if same is None:
        return blank_problem(status, description, headers)
    return domain_problem(same(description or same.title, headers=headers))


def request_id() -> str:
    from quart_app.edge.access_log import scope_request_id

    return scope_request_id(request.scope)


def init_app(app: Quart) -> None:
    # Tests and debug mode must see the same problem responses as production.
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.config["TRAP_HTTP_EXCEPTIONS"] = False

    @app.errorhandler(DomainError)
    async def _domain(error: DomainError) -> Response:
        return domain_problem(error)

    @app.errorhandler(StorageFull)
    async def _storage_full(error: StorageFull) -> Response:
        extra = {"request_id": request_id(), "path": logged_path(request.path)}
        log.error("storage full", extra=extra)
        return domain_problem(InsufficientStorage("There is no room left to store the file."))

    @app.errorhandler(StorageUnwritable)
    async def _storage_unwritable(error: StorageUnwritable) -> Response:
        extra = {"request_id": request_id(), "path": logged_path(request.path)}
        log.error("storage unwritable: %s", error, extra=extra)
        return domain_problem(StorageUnavailable("The storage cannot take the file right now."))

    @app.errorhandler(DBAPIError)
    async def _database(error: DBAPIError) -> Response:
        fault = database_fault(error)
        if fault is None:
            return await _unexpected(error)
        log.error(
            "database unavailable: %s",
            error.orig,
            extra={"request_id": request_id(), "path": logged_path(request.path)},
        )
        return domain_problem(fault)

    @app.errorhandler(ClientDisconnected)
    async def _disconnected(error: ClientDisconnected) -> Response:
        # Nobody will read this; it records what happened in the access log.
        return blank_problem(400, "The client disconnected before the body was complete.")

    @app.errorhandler(HTTPException)
    async def _http(error: HTTPException) -> Response:
        return http_problem(error)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.error(
            "unhandled exception",
            exc_info=error,
            extra={"request_id": request_id(), "path": logged_path(request.path)},
        )
        return blank_problem(500, "An unexpected error occurred. It has been logged.")
