"""List endpoints: reading limit/cursor and answering a page with Link."""

from __future__ import annotations

from typing import Any

from quart import Response, jsonify, request, url_for

from quart_app.edge.cursors import CursorCodec, parse_limit
from quart_app.state import app_state


def _codec() -> CursorCodec:
    return app_state().cursor_codec


def page_request(resource: str) -> tuple[int, int]:
    """(after, limit) from the query string; 400 for a bad limit or cursor."""
    config = app_state().settings
    limit = parse_limit(request.args.get("limit"), config.PAGE_SIZE_DEFAULT, config.PAGE_SIZE_MAX)
    cursor = request.args.get("cursor")
    after = _codec().decode(resource, cursor) if cursor is not None else 0
    return after, limit


def page_response(
    resource: str, endpoint: str, items: list[dict[str, Any]], last_key: int | None, limit: int
) -> Response:
    """``{"items", "next"}``; ``last_key`` is None on the last page."""
    next_url = None
    if last_key is not None:
        cursor = _codec().encode(resource, last_key)
        next_url = url_for(endpoint, limit=limit, cursor=cursor, _external=True)
    response = jsonify({"items": items, "next": next_url})
    if next_url:
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return response
