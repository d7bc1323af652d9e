"""The browser upload page at ``/`` and the assets under ``/static/`` (for
the page and /docs)
(DESIGN section 7; README "The browser page").

The page is public (it holds nothing of anyone's: the key is typed into
it, then it calls the API like any client). Its Content-Security-Policy
lets it run only the scripts and styles served from here: no inline script
or style, no eval, no other host, not framed.
"""

from __future__ import annotations

from quart import Blueprint, Response, render_template_string
from quart_schema import hide

from quart_app.edge.assets import REVALIDATE, STATIC_ROOT, manifest, send_asset
from quart_app.edge.authentication import public

blueprint = Blueprint("page", __name__)
# The assets, for the page and /docs alike: registered while either is on.
assets_blueprint = Blueprint("assets", __name__)

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


async def render_page(template: str, csp: str, **context: str) -> Response:
    """A page from quart_app/static/, naming the assets by their hashed URLs."""
    source = (STATIC_ROOT / template).read_text(encoding="utf-8")
    html = await render_template_string(source, asset=manifest().url, **context)
    response = Response(html, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = csp
    response.headers["Cache-Control"] = REVALIDATE
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@blueprint.get("/")
@public
@hide
async def upload_page() -> Response:
    """The upload page."""
    return await render_page("page/index.html", PAGE_CSP)


@assets_blueprint.get("/static/<path:name>")
@public
@hide
async def asset(name: str) -> Response:
    """A content-hashed asset, cacheable for a year."""
    return await send_asset(name)
