"""RFC 9457 problem details: one table of error codes, one set of handlers.

Every 4xx/5xx leaves as ``application/problem+json``: domain errors, the
HTTP errors Quart and Werkzeug raise themselves (404, 405, 408, 413, 415),
request-validation errors, and unexpected exceptions (a 500 whose body says
nothing of the internals; the traceback goes to the log with the request id).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel
from quart import Quart, Response, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from quart_app.db.engine import database_fault
from quart_app.edge.bodies import ClientDisconnected
from quart_app.errors import DomainError, InsufficientStorage, StorageUnavailable
from quart_app.storage import StorageFull, StorageUnwritable

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:quart-app:problem:"
log = logging.getLogger("quart_app.errors")

# code -> (status, title). The code also names the problem type.
PROBLEMS: dict[str, tuple[int, str]] = {
    "validation-failed": (400, "The request is not valid"),
    "malformed-body": (400, "The request body could not be parsed"),
    "invalid-cursor": (400, "The paging cursor is not valid"),
    "not-found": (404, "Not found"),
    "email-taken": (409, "That email address is already taken"),
    "offset-mismatch": (409, "Upload-Offset does not match the upload's offset"),
    "conflict": (409, "Conflict"),
    "idempotency-key-in-use": (409, "A request with this Idempotency-Key is still running"),
    "gone": (410, "The upload has expired"),
    "precondition-failed": (412, "A precondition failed"),
    "unsupported-protocol-version": (412, "Unsupported tus version"),
    "too-large": (413, "Content too large"),
    "too-many-parts": (413, "Too many parts in the request"),
    "uri-too-long": (414, "The request target is too long"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "idempotency-key-reused": (422, "The Idempotency-Key was used for another request"),
    "upload-locked": (423, "Another request is writing to this upload"),
    "headers-too-large": (431, "The request's header fields are too large"),
    "checksum-mismatch": (460, "Checksum mismatch"),
    "insufficient-storage": (507, "Insufficient storage"),
    "invalid-host": (400, "The Host header is not valid"),
    "host-not-allowed": (400, "This server does not answer for that host"),
    "blob-unavailable": (503, "The file's content is unavailable"),
    "database-unavailable": (503, "The database is not available"),
    "storage-unavailable": (503, "The storage is not available"),
}

# code -> seconds a client is asked to wait before retrying (Retry-After):
# the problems that end by themselves or by an operator's hand, not by the
# client changing its request.
RETRY_AFTER: dict[str, int] = {
    "blob-unavailable": 5,
    "database-unavailable": 5,
    "storage-unavailable": 30,
    "insufficient-storage": 60,
}


class Problem(BaseModel):
    """An RFC 9457 problem. ``errors`` appears for field-level validation."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


def problem_response(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **members: Any,
) -> Response:
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body: dict[str, Any] = {
        "type": type_,
        "title": title or phrase,
        "status": status,
        "detail": detail or title or phrase,
    }
    body.update(members)
    response = Response(json.dumps(body), status=status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def domain_problem(error: DomainError) -> Response:
    code = error.code
    status, title = PROBLEMS[code]
    retry_after = RETRY_AFTER.get(code)
    return problem_response(
        status,
        title=title,
        detail=error.detail,
        type_=TYPE_PREFIX + code,
        headers=None if retry_after is None else {"Retry-After": str(retry_after)},
        **error.members,
    )


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
    return problem_response(status, detail=description, headers=headers)


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
        log.error("storage full", extra={"request_id": request_id(), "path": request.path})
        return domain_problem(InsufficientStorage("There is no room left to store the file."))

    @app.errorhandler(StorageUnwritable)
    async def _storage_unwritable(error: StorageUnwritable) -> Response:
        extra = {"request_id": request_id(), "path": request.path}
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
            extra={"request_id": request_id(), "path": request.path},
        )
        return domain_problem(fault)

    @app.errorhandler(ClientDisconnected)
    async def _disconnected(error: ClientDisconnected) -> Response:
        # Nobody will read this; it records what happened in the access log.
        return problem_response(400, detail="The client disconnected before the body was complete.")

    @app.errorhandler(HTTPException)
    async def _http(error: HTTPException) -> Response:
        return http_problem(error)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.error(
            "unhandled exception",
            exc_info=error,
            extra={"request_id": request_id(), "path": request.path},
        )
        return problem_response(500, detail="An unexpected error occurred. It has been logged.")
