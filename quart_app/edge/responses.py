"""Response shapes every blueprint uses."""

from __future__ import annotations

from typing import Any

from quart import Response, jsonify


def created(body: dict[str, Any], location: str, headers: dict[str, str] | None = None) -> Response:
    """201 Created: the new resource's absolute URL and its representation."""
    response = jsonify(body)
    response.status_code = 201
    response.headers["Location"] = location
    response.headers.update(headers or {})
    return response


def empty_response(status: int, headers: dict[str, str] | None = None) -> Response:
    """204 and 304 carry no body, so no Content-Type either."""
    response = Response(status=status, headers=headers)
    del response.headers["Content-Type"]
    return response
