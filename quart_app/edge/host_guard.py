"""The Host a request names: well-formed always, and one of
QUART_APP_ALLOWED_HOSTS when that is set; otherwise a 400 problem.

Every absolute URL the app builds (Location, Link, links in bodies, a 409's
``existing``, and the responses stored for Idempotency-Key replays) starts
with the request's scheme and Host. A malformed Host (``evil.example/@x``,
spaces, a bad port, empty) made Werkzeug fall back to an empty host and
URLs like ``http:///users/1``; a well-formed but foreign one was echoed as
given. Django answers both with 400 (``ALLOWED_HOSTS``); so does this.

An ASGI middleware, not a ``before_request`` hook: it must see the Host as it
arrived (or as a trusted proxy forwarded it, forwarded.py runs outside it)
before public_url.py replaces it, and answer before routing, body limits
or any view. It sits inside the access log, so a refused request is logged
with its request id. WebSocket scopes pass untouched: the app serves none.
"""

from __future__ import annotations

from typing import Any

from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
)
from quart import Quart

from quart_app.config import ENV_PREFIX, ConfigError, Settings
from quart_app.edge.hosts import AllowedHosts, parse_host
from quart_app.edge.problems import domain_problem
from quart_app.errors import DomainError, HostNotAllowed, InvalidHost


def effective_host(scope: Any) -> tuple[str, Any]:
    """The request's Host, and the scope to pass on. HTTP/1.0 may omit Host;
    then the server's own address stands in (what a WSGI server's
    SERVER_NAME:SERVER_PORT would give), put into the scope so that URLs use
    it too. Raises InvalidHost for two Host fields or an empty one."""
    values = [value for name, value in scope["headers"] if name.lower() == b"host"]
    if len(values) > 1:
        raise InvalidHost("The request has more than one Host header field.")
    if values and values[0]:
        return values[0].decode("latin-1"), scope
    server = scope.get("server")
    if scope.get("http_version") in ("1.0", "0.9") and server and server[1] is not None:
        address = server[0] if ":" not in server[0] else f"[{server[0]}]"
        host = f"{address}:{server[1]}"
        headers = [(n, v) for n, v in scope["headers"] if n.lower() != b"host"]
        return host, {**scope, "headers": [*headers, (b"host", host.encode("ascii"))]}
    raise InvalidHost("The request's Host header is empty.")


def check_host(scope: Any, allowed: AllowedHosts) -> Any:
    """The scope to pass on; InvalidHost or HostNotAllowed otherwise."""
    value, scope = effective_host(scope)
    host = parse_host(value)
    if host is None:
        # The value is not echoed: it is what the client got wrong, and it
        # may be anything.
        raise InvalidHost(
            "The Host header must be a host name or IP address with an optional port."
        )
    if not allowed.allows(host, scope["scheme"]):
        raise HostNotAllowed("This server does not answer for the host the request names.")
    return scope


class HostGuardMiddleware:
    def __init__(self, app: Any, allowed: AllowedHosts) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(
        self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http":
            try:
                scope = check_host(scope, self.allowed)
            except (InvalidHost, HostNotAllowed) as error:
                await _send_problem(send, error, body_follows=_body_follows(scope))
                return
        await self.app(scope, receive, send)


def _body_follows(scope: Any) -> bool:
    """An HTTP/1 request that declares a body (which this answer never reads)."""
    if scope.get("http_version") not in ("1.0", "1.1"):
        return False
    for name, value in scope.get("headers") or ():
        name = name.lower()
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def _send_problem(send: ASGISendCallable, error: DomainError, body_follows: bool) -> None:
    # The body is never read: like an early answer from a view, the answer
    # says Connection: close, and the server closes gently after it
    # (server_internals.GuardedTCPServer lingers).
    response = domain_problem(error)
    response.headers["X-Content-Type-Options"] = "nosniff"
    if body_follows:
        response.headers["Connection"] = "close"
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": response.status_code,
        "headers": [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers.items()
        ],
        "trailers": False,
    }
    body: HTTPResponseBodyEvent = {
        "type": "http.response.body",
        "body": await response.get_data(as_text=False),
        "more_body": False,
    }
    await send(start)
    await send(body)


def init_app(app: Quart, settings: Settings) -> None:
    """Always installed: a malformed Host is refused in every configuration."""
    try:
        allowed = AllowedHosts.parse(settings.ALLOWED_HOSTS)
    except ValueError as error:
        raise ConfigError(f"{ENV_PREFIX}ALLOWED_HOSTS has an invalid value: {error}") from None
    app.asgi_app = HostGuardMiddleware(app.asgi_app, allowed)  # type: ignore[method-assign]
