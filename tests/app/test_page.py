"""The browser page and /docs as a client without a browser sees them: no
key needed, a strict policy, no inline script or style, no other host,
assets under content-hashed names cached for a year (api/page.py,
api/docs.py, edge/assets.py). tests/e2e/test_page.py drives them in Chromium."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from quart import Quart
from quart.testing import QuartClient

from devtools.auth import KeyedClient
from quart_app import create_app
from quart_app.api.docs import DOCS_CSP
from quart_app.api.page import PAGE_CSP
from quart_app.edge.assets import IMMUTABLE

# Relative to the page (both pages are at the app's root).
ASSET = re.compile(r'(?:src|href)="(static/[^"]+)"')


def anonymous(app: Quart) -> QuartClient:
    client = app.test_client()
    assert isinstance(client, KeyedClient)
    client.key = None
    return client


async def page_html(client: QuartClient, path: str, csp: str) -> str:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.headers["Content-Security-Policy"] == csp
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    html: str = await response.get_data(as_text=True)
    return html


async def test_the_page_needs_no_key_and_runs_only_its_own_files(app: Quart) -> None:
    html = await page_html(anonymous(app), "/", PAGE_CSP)
    for forbidden in ("'unsafe-inline'", "'unsafe-eval'", "*"):
        assert forbidden not in PAGE_CSP
    # No inline script or style: every script has a src, no style element
    # or attribute, no event-handler attributes; nothing from another host.
    assert len(re.findall(r"<script\b", html)) == len(re.findall(r"<script src=", html)) == 2
    assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=", html)
    assert "http://" not in html and "https://" not in html
    assert "sessionStorage" not in html  # the script holds the key, not the markup


async def test_assets_have_content_hashed_names_and_are_cached_for_a_year(app: Quart) -> None:
    client = anonymous(app)
    names = ASSET.findall(await page_html(client, "/", PAGE_CSP))
    names += ASSET.findall(await page_html(client, "/docs", DOCS_CSP))
    assert len(set(names)) == 7
    types = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
    for name in set(names):
        digest, suffix = re.fullmatch(r".+\.([0-9a-f]{12})\.(js|css|svg)", name).groups()  # type: ignore[union-attr]
        response = await client.get("/" + name)
        assert response.status_code == 200, name
        assert response.headers["Cache-Control"] == IMMUTABLE
        assert response.mimetype == types[suffix]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        body = await response.get_data()
        assert isinstance(body, bytes)
        assert hashlib.sha256(body).hexdigest()[:12] == digest


async def test_a_name_that_is_not_a_current_asset_is_a_404(app: Quart) -> None:
    client = anonymous(app)
    html = await page_html(client, "/", PAGE_CSP)
    current = next(n for n in ASSET.findall(html) if n.endswith(".js") and "page/" in n)
    stale = "/" + re.sub(r"\.[0-9a-f]{12}\.", ".000000000000.", current)
    for name in (
        stale,
        "/static/page/page.js",
        "/static/page/index.html",
        "/static/vendor/VENDORED.md",
        "/static/../config.py",
        "/static/%2e%2e/config.py",
    ):
        response = await client.get(name)
        assert response.status_code == 404, name
        assert response.mimetype == "application/problem+json"


async def test_docs_serve_swagger_ui_from_here(app: Quart) -> None:
    html = await page_html(anonymous(app), "/docs", DOCS_CSP)
    assert re.search(r"static/vendor/swagger-ui-dist-[\d.]+/swagger-ui-bundle\.\w{12}\.js", html)
    assert re.search(r"static/vendor/swagger-ui-dist-[\d.]+/swagger-ui\.\w{12}\.css", html)
    assert "http://" not in html and "https://" not in html
    assert len(re.findall(r"<script\b", html)) == len(re.findall(r"<script src=", html)) == 2
    assert "'unsafe-eval'" not in DOCS_CSP and "'unsafe-inline'" not in DOCS_CSP


async def test_ui_off_removes_the_page_and_keeps_the_docs(overrides: dict[str, Any]) -> None:
    app = create_app({**overrides, "UI": False})
    async with app.test_app():
        client = app.test_client()
        assert (await client.get("/")).status_code == 404
        assert (await anonymous(app).get("/")).status_code == 401  # strangers learn nothing
        html = await page_html(anonymous(app), "/docs", DOCS_CSP)
        for name in ASSET.findall(html):  # its assets are still served
            assert (await anonymous(app).get("/" + name)).status_code == 200, name


async def test_docs_off_makes_docs_an_unknown_url(overrides: dict[str, Any]) -> None:
    """QUART_APP_DOCS=0: /docs answers as a URL that never existed (404 to
    a key holder, 401 to a stranger); the page and /openapi.json stay."""
    app = create_app({**overrides, "DOCS": False})
    async with app.test_app():
        client = app.test_client()
        docs, unknown = await client.get("/docs"), await client.get("/no-such-page")
        assert docs.status_code == unknown.status_code == 404
        problem, unknown_problem = await docs.get_json(), await unknown.get_json()
        assert problem["type"] == unknown_problem["type"] == "urn:quart-app:problem:not-found"
        assert problem["detail"] == unknown_problem["detail"].replace("/no-such-page", "/docs")
        assert (await anonymous(app).get("/docs")).status_code == 401
        assert (await client.get("/openapi.json")).status_code == 200
        html = await page_html(anonymous(app), "/", PAGE_CSP)
        for name in ASSET.findall(html):
            assert (await anonymous(app).get("/" + name)).status_code == 200, name


async def test_docs_and_ui_off_serve_no_assets(overrides: dict[str, Any]) -> None:
    on = create_app(overrides)
    async with on.test_app():
        html = await page_html(anonymous(on), "/docs", DOCS_CSP)
    app = create_app({**overrides, "DOCS": False, "UI": False})
    async with app.test_app():
        name = ASSET.findall(html)[0]
        assert (await app.test_client().get("/" + name)).status_code == 404
