"""Bearer API keys on every request (RFC 6750), scopes, and a bound on
failed attempts.

Every request carries ``Authorization: Bearer <key>`` except those to views
marked :func:`public` (health, the API description, signed links, the
browser page's assets) and ``OPTIONS`` requests (CORS preflights and tus
discovery, which show nothing of anyone's data). The answers:

- no ``Authorization`` header, or another scheme: 401 with
  ``WWW-Authenticate: Bearer realm="quart_app"`` (RFC 6750 section 3.1: no
  error code when the request had no credentials);
- a malformed, unknown, expired or revoked key: 401 with
  ``error="invalid_token"``;
- a key without the scope the view needs (``GET``/``HEAD``: ``read``; other
  methods: ``write``; some views: ``admin``): 403 with
  ``error="insufficient_scope"``;
- a client address that failed AUTH_FAILURES_PER_MINUTE times within a
  minute: 429 with ``Retry-After`` for any key this worker does not already
  know to be good, until the minute ends.

The key itself is never logged; the access log shows the key's id.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from quart import Quart, Response, g, request

from quart_app.config import Settings
from quart_app.edge.access_log import note
from quart_app.edge.problems import domain_problem
from quart_app.errors import InsufficientScope, TooManyFailedAuthentications, Unauthorized
from quart_app.services.accounts import Access
from quart_app.state import app_state

REALM = 'Bearer realm="quart_app"'
# RFC 6750 section 2.1: b64token, bounded (our keys are 46 characters).
TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
MAX_TOKEN_CHARS = 512
READ_METHODS = frozenset({"GET", "HEAD"})
MAX_TRACKED_CLIENTS = 10_000
# Views registered by others (quart-schema's API description): public, as
# they hold nothing of anyone's.
PUBLIC_ENDPOINTS = frozenset({"openapi"})

F = TypeVar("F", bound=Callable[..., Any])


def public(view: F) -> F:
    """The view answers without a key."""
    view.public = True  # type: ignore[attr-defined]
    return view


def requires(scope: str) -> Callable[[F], F]:
    """The scope the view needs instead of the method's default."""

    def mark(view: F) -> F:
        view.required_scope = scope  # type: ignore[attr-defined]
        return view

    return mark


def anonymous_when(allowed: Callable[[Settings], bool]) -> Callable[[F], F]:
    """The view also answers a request with no Authorization header at all
    when ``allowed(settings)`` (open sign-up); ``optional_access()`` is then None."""

    def mark(view: F) -> F:
        view.anonymous_when = allowed  # type: ignore[attr-defined]
        return view

    return mark


def current_access() -> Access:
    access: Access | None = g.get("access")
    if access is None:
        raise Unauthorized("This request needs an API key.", headers={"WWW-Authenticate": REALM})
    return access


def optional_access() -> Access | None:
    access: Access | None = g.get("access")
    return access


class FailureLimiter:
    """Failed authentications per client address, in fixed one-minute
    windows, for at most MAX_TRACKED_CLIENTS addresses (the oldest dropped)."""

    WINDOW = 60.0

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def _window(self, client: str, now: float) -> tuple[float, int]:
        start, count = self._windows.get(client, (now, 0))
        if now - start >= self.WINDOW:
            start, count = now, 0
        return start, count

    def blocked_for(self, client: str) -> float:
        """Seconds until this client may be looked at again (0: not blocked)."""
        if not self.limit:
            return 0.0
        now = time.monotonic()
        start, count = self._window(client, now)
        return start + self.WINDOW - now if count >= self.limit else 0.0

    def failed(self, client: str) -> None:
        now = time.monotonic()
        start, count = self._window(client, now)
        self._windows[client] = (start, count + 1)
        self._windows.move_to_end(client)
        while len(self._windows) > MAX_TRACKED_CLIENTS:
            self._windows.popitem(last=False)


def _invalid(detail: str) -> Unauthorized:
    return Unauthorized(detail, headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'})


def _presented_token(values: list[str]) -> str:
    """The bearer token of the request; Unauthorized if there is none."""
    if not values:
        raise Unauthorized(
            "This request needs an API key: Authorization: Bearer <key>.",
            headers={"WWW-Authenticate": REALM},
        )
    if len(values) > 1:
        raise _invalid("Send one Authorization header.")
    scheme, _, token = values[0].strip(" \t").partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized(
            "Only Bearer API keys are accepted: Authorization: Bearer <key>.",
            headers={"WWW-Authenticate": REALM},
        )
    token = token.strip(" \t")
    if len(token) > MAX_TOKEN_CHARS or TOKEN.fullmatch(token) is None:
        raise _invalid("The API key is malformed.")
    return token


def required_scope(view: Any, method: str) -> str:
    scope: str | None = getattr(view, "required_scope", None)
    return scope or ("read" if method in READ_METHODS else "write")


def init_app(app: Quart, settings: Settings) -> None:
    limiter = FailureLimiter(settings.AUTH_FAILURES_PER_MINUTE)

    def refuse(client: str, error: Unauthorized) -> Unauthorized | TooManyFailedAuthentications:
        limiter.failed(client)
        wait = limiter.blocked_for(client)
        if wait:
            return _too_many(wait)
        return error

    @app.errorhandler(InsufficientScope)
    async def _insufficient_scope(error: InsufficientScope) -> Response:
        # RFC 6750 section 3.1: a 403 for a missing scope carries the
        # challenge, whichever layer refused (a view, or a service refusing
        # to grant a scope the key lacks).
        error.headers.setdefault("WWW-Authenticate", f'{REALM}, error="insufficient_scope"')
        return domain_problem(error)

    @app.before_request
    async def _authenticate() -> None:
        # On every request: the request proxy is resolved once (each use of
        # it is a context-variable lookup; issue 14 item 10 bounds this hook).
        current = request._get_current_object()  # type: ignore[attr-defined]
        method, endpoint = current.method, current.endpoint
        if method == "OPTIONS":
            return
        view = app.view_functions.get(endpoint) if endpoint else None
        if endpoint in PUBLIC_ENDPOINTS or getattr(view, "public", False):
            return
        values = current.headers.getlist("Authorization")
        anonymous = getattr(view, "anonymous_when", None)
        if not values and anonymous is not None and anonymous(settings):
            g.access = None
            return
        client = current.remote_addr or "-"
        try:
            token = _presented_token(values)
        except Unauthorized as error:
            if values:
                raise refuse(client, error) from None
            raise
        keys = app_state(app).keys
        access = keys.known(token)
        if access is None:
            wait = limiter.blocked_for(client)
            if wait:
                raise _too_many(wait)
            access = await keys.lookup(token)
            if access is None:
                raise refuse(client, _invalid("The API key is unknown, expired or revoked."))
        keys.note_use(access)
        note(current.scope, key_id=access.key_id)
        g.access = access
        if current.routing_exception is not None:
            return  # no view takes it: the 404 or 405 (the same for every key) follows
        scope = required_scope(view, method)
        if not access.allows(scope):
            raise InsufficientScope(
                f"This request needs a key with the {scope!r} scope.",
                headers={
                    "WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{scope}"'
                },
            )


def _too_many(wait: float) -> TooManyFailedAuthentications:
    return TooManyFailedAuthentications(
        "Too many requests from this address had a bad API key; wait before trying again.",
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )
