"""X-HTTP-Method-Override for tus clients behind proxies that only pass
GET and POST: a POST to /uploads... carrying the header is routed as the
method it names. Only there, and only to the methods tus uses."""

from __future__ import annotations

from typing import Any

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from quart import Quart

OVERRIDE_HEADER = b"x-http-method-override"
ALLOWED = {"PATCH", "DELETE", "HEAD"}
PREFIX = "/uploads"


class MethodOverrideMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(
        self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].startswith(PREFIX)
        ):
            for name, value in scope["headers"]:
                if name.lower() == OVERRIDE_HEADER:
                    method = value.decode("latin-1").strip().upper()
                    if method in ALLOWED:
                        scope = {**scope, "method": method}
                    break
        await self.app(scope, receive, send)


def init_app(app: Quart) -> None:
    app.asgi_app = MethodOverrideMiddleware(app.asgi_app)  # type: ignore[method-assign]
