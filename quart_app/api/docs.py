"""The API documentation at ``/docs``: Swagger UI, served from here.

quart-schema's own page loads Swagger UI from a CDN and starts it with an
inline script; this one names the vendored copy (quart_app/static/vendor/)
and starts it from docs/docs.js, so it works with no network beyond this
server and under a CSP without inline script. Swagger UI's policy differs
from the upload page's in one place: its icons are ``data:`` SVG images.
"""

from __future__ import annotations

from quart import Blueprint, Response
from quart_schema import hide

from quart_app.api.page import render_page
from quart_app.edge.authentication import public

blueprint = Blueprint("docs", __name__)

DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@blueprint.get("/docs")
@public
@hide
async def swagger_ui() -> Response:
    """Swagger UI over /openapi.json."""
    return await render_page("docs/index.html", DOCS_CSP, openapi_url="openapi.json")
