"""Request metrics: the route template a request took, uploads in flight,
and each finished request's count, duration and bytes (quart_app/metrics.py).

The access-log middleware already measures a request at the ASGI level
(status, bytes in and out of a streamed body, duration, a hang-up); it hands
the same figures here when the request ends (:func:`request_finished`), so
the bytes are counted once. What only Quart knows, the route, is noted on
the request's log notes by a hook that runs before every other (so a request
refused by authentication still has its route). The label is the URL rule
(``/files/<file_id>``), never the path: one series per route, whatever ids
clients send.
"""

from __future__ import annotations

from typing import Any

from quart import Quart, request

from quart_app import metrics
from quart_app.edge.access_log import note
from quart_app.edge.bodies import LIMIT_ATTRIBUTE, upload_body_limit

ROUTE_NOTE = "route"
UPLOAD_NOTE = "upload"


def request_finished(
    notes: dict[str, Any], method: str, status: int, seconds: float, received: int, sent: int
) -> None:
    """Called by the access log once a request is done with (cleanup too)."""
    if notes.get(UPLOAD_NOTE):
        metrics.upload_ended()
    metrics.request_finished(notes.get(ROUTE_NOTE), method, status, seconds, received, sent)


def init_app(app: Quart) -> None:
    """Before every other before_request hook: call it first in create_app."""

    @app.before_request
    async def _note_route() -> None:
        current = request._get_current_object()  # type: ignore[attr-defined]
        rule = current.url_rule
        if rule is None:
            return  # no route took it: labelled metrics.UNMATCHED
        view = app.view_functions.get(rule.endpoint)
        upload = getattr(view, LIMIT_ATTRIBUTE, None) is upload_body_limit
        note(current.scope, **{ROUTE_NOTE: rule.rule, UPLOAD_NOTE: upload})
        if upload:
            metrics.upload_started()
