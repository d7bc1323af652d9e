"""quart_app: an async upload and record-creation service.

``create_app(overrides)`` builds the app; nothing is created at import time.
Serve with ``python -m quart_app serve`` (ops/serve.py), which runs Hypercorn
with hypercorn.toml (``hypercorn -c hypercorn.toml 'quart_app:create_app()'``
works too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quart import Quart

from quart_app import state
from quart_app.api import (
    batches,
    docs,
    files,
    health,
    imports,
    keys,
    links,
    page,
    resumable_uploads,
    users,
)

# Aliased: quart_app.metrics is the metric families' module.
from quart_app.api import metrics as metrics_api
from quart_app.config import load_settings
from quart_app.edge import (
    access_log,
    authentication,
    bodies,
    cors,
    forwarded,
    host_guard,
    method_override,
    nosniff,
    openapi,
    problems,
    public_url,
    request_head,
    server_internals,
)
from quart_app.edge import metrics as request_metrics
from quart_app.ops import memory

__all__ = ["create_app"]


def create_app(overrides: Mapping[str, Any] | None = None) -> Quart:
    """Build the app from defaults, ``QUART_APP_*`` variables and ``overrides``
    (keyed by setting name, e.g. ``{"STORAGE_DIR": tmp_path}``)."""
    settings = load_settings(overrides)
    # The page's assets are served by api/page.py under hashed names, not by
    # Quart's static route.
    app = Quart(__name__, static_folder=None)
    app.url_rule_class = server_internals.LazyBuilderRule  # before the first rule
    state.init_app(app, state.AppState(settings))
    openapi.init_app(app)
    # Request checks and answers, in the order a request meets them.
    request_metrics.init_app(app)  # first: a refused request still has its route
    request_head.init_app(app, settings)
    authentication.init_app(app, settings)  # before routing errors: no URL map for strangers
    bodies.init_app(app, settings)
    server_internals.init_app(app, settings)
    problems.init_app(app)
    nosniff.init_app(app)
    cors.init_app(app, settings)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(users.blueprint)
    app.register_blueprint(keys.blueprint)
    app.register_blueprint(files.blueprint)
    app.register_blueprint(links.blueprint)
    app.register_blueprint(batches.blueprint)
    app.register_blueprint(resumable_uploads.blueprint)
    app.register_blueprint(imports.blueprint)
    if settings.DOCS:
        app.register_blueprint(docs.blueprint)
    app.register_blueprint(metrics_api.blueprint)
    if settings.UI:
        app.register_blueprint(page.blueprint)
    if settings.UI or settings.DOCS:
        app.register_blueprint(page.assets_blueprint)
    memory.init_app(app)  # last: it freezes what the startup steps before it made
    # ASGI middlewares, innermost first.
    public_url.init_app(app, settings)
    host_guard.init_app(app, settings)
    method_override.init_app(app)
    access_log.init_app(app, settings, request_metrics.request_finished)
    forwarded.init_app(app, settings)
    return app
