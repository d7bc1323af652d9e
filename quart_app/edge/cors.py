"""CORS for browser clients (tus-js-client in a page, say): allowed origins
come from QUART_APP_CORS_ORIGINS; tus and upload headers are exposed."""

from __future__ import annotations

from quart import Quart, Response, request

from quart_app.config import Settings

EXPOSED = (
    "Location, ETag, Link, X-Request-ID, Content-Disposition, Content-Range, "
    "Upload-Offset, Upload-Length, Upload-Metadata, Upload-Defer-Length, Upload-Expires, "
    "Tus-Version, Tus-Resumable, Tus-Max-Size, Tus-Extension, Tus-Checksum-Algorithm, "
    "WWW-Authenticate, Retry-After"
)
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Content-Disposition, If-Match, If-None-Match, If-Range, Range, "
    "Idempotency-Key, X-Request-ID, X-HTTP-Method-Override, Tus-Resumable, Upload-Length, "
    "Upload-Offset, Upload-Metadata, Upload-Defer-Length, Upload-Checksum"
)
METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
PREFLIGHT_MAX_AGE = "86400"


def allowed_origins(settings: Settings) -> set[str]:
    return {o.strip() for o in settings.CORS_ORIGINS.split(",") if o.strip()}


def init_app(app: Quart, settings: Settings) -> None:
    origins = allowed_origins(settings)
    if not origins:
        return
    anyone = "*" in origins

    @app.after_request
    async def _cors(response: Response) -> Response:
        # Fetch standard, "CORS protocol and HTTP caches": "*" is one answer
        # for every request, given whether or not it carries Origin, so it
        # never varies. With a list, the answer depends on Origin, also when
        # Origin is absent or refused, so every response says Vary: Origin
        # (else a shared cache may give one origin's answer to another).
        if anyone:
            allow = "*"
        else:
            response.vary.add("Origin")
            origin = request.headers.get("Origin")
            if origin is None or origin not in origins:
                return response
            allow = origin
        response.headers["Access-Control-Allow-Origin"] = allow
        response.headers["Access-Control-Expose-Headers"] = EXPOSED
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response.headers["Access-Control-Allow-Methods"] = METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        return response
