"""RFC 9457 problem details for a domain error: its document, headers and
bytes, with no framework.

problems.py turns them into Quart responses; the edge code that answers
before Quart sees a request (server_internals.py, host_guard.py)
sends them as they are, so a problem has the same shape whichever layer
answers it. The type, title, status and Retry-After come from the error's
class (errors.py, the one table).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from quart_app.errors import DomainError

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:quart-app:problem:"
BLANK_TYPE = "about:blank"


def problem_type(code: str) -> str:
    return TYPE_PREFIX + code


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # 460, tus's checksum mismatch, is not in the registry
        return "Error"


def problem_document(error: DomainError) -> dict[str, Any]:
    document: dict[str, Any] = {
        "type": problem_type(error.code),
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
    }
    document.update(error.members)
    return document


def problem_headers(error: DomainError) -> dict[str, str]:
    """The headers that go with the problem (besides its content type):
    Retry-After from the table, then what the error carries."""
    headers: dict[str, str] = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    headers.update(error.headers)
    return headers


def problem_bytes(error: DomainError) -> bytes:
    return json.dumps(problem_document(error)).encode()


def raw_problem(error: DomainError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, header fields (lower-case names, content type and length
    included) and body, for code that writes ASGI events or raw HTTP."""
    body = problem_bytes(error)
    fields = [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        # What nosniff.py adds to the answers that pass through Quart.
        (b"x-content-type-options", b"nosniff"),
    ]
    fields += [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in problem_headers(error).items()
    ]
    return error.status, fields, body
