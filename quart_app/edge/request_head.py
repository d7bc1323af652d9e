"""Bounds on the request head: the target and the header fields.

Hypercorn (h11) only bounds a head that is still arriving
(``h11_max_incomplete_size``); one that arrives whole in a single read
passes it. Here every head is held to ``MAX_HEADER_BYTES``, with a problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quart import Quart, request

from quart_app.config import Settings
from quart_app.errors import HeadersTooLarge, TargetTooLong


def head_sizes(scope: Mapping[str, Any]) -> tuple[int, int]:
    """Bytes of the target (path and query) and of the header fields as sent
    (``name: value`` and CRLF per field)."""
    target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    fields = sum(len(name) + len(value) + 4 for name, value in scope.get("headers") or ())
    return target, fields


def init_app(app: Quart, settings: Settings) -> None:
    limit = settings.MAX_HEADER_BYTES

    @app.before_request
    async def _check_head() -> None:
        target, fields = head_sizes(request.scope)
        if target > limit:
            raise TargetTooLong(f"The request target is longer than {limit} bytes.")
        if fields > limit:
            raise HeadersTooLarge(f"The request's header fields exceed {limit} bytes.")
