"""Idempotency-Key on creates (IETF httpapi draft "The Idempotency-Key HTTP
Header Field"): the HTTP edge of services/idempotency.py.

- ``@idempotent`` on a create view claims the key, replays a completed one
  (byte for byte, with ``Idempotent-Replayed: true``) after consuming and
  fingerprinting the body, answers 422 for the same key with another
  payload and 409 while the first request still runs.
- The view calls ``record_response(session, response)`` inside the
  transaction that creates the resource.
- Anything but a recorded success releases the key: a request rejected
  before it created anything can be corrected and retried with the same key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema
from quart import Response, g, request
from sqlalchemy.ext.asyncio import AsyncSession
from werkzeug.datastructures import Headers

from quart_app.edge.authentication import optional_access
from quart_app.edge.schemas import IdempotencyKey
from quart_app.errors import IdempotencyKeyBusy, IdempotencyKeyReused, InvalidInput
from quart_app.services.idempotency import (
    Claim,
    KeyCompleted,
    KeyInUse,
    StoredResponse,
    claim,
    complete,
    release,
)
from quart_app.state import app_state

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
# Headers that change what a create means; they join the body in the fingerprint.
FINGERPRINT_HEADERS = (
    "content-type",
    "content-disposition",
    "upload-length",
    "upload-defer-length",
    "upload-metadata",
)
LEASE_MARGIN = timedelta(minutes=1)

V = TypeVar("V", bound=Callable[..., Awaitable[Response]])


class IdempotencyHeaders(BaseModel):
    idempotency_key: IdempotencyKey | SkipJsonSchema[None] = Field(
        default=None,
        description="1-255 visible ASCII characters, bare or as a quoted string; "
        "a retry with the same key and payload replays the first response",
    )


def parse_key(raw: str | None) -> str | None:
    """The key from a structured-field string (``"abc"``) or bare (``abc``)."""
    if raw is None:
        return None
    value = raw.strip()
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            raise _bad_key("an opening quote needs a closing one")
        value = _unescape(value[1:-1])
    if not 1 <= len(value) <= MAX_KEY_CHARS:
        raise _bad_key(f"must be 1 to {MAX_KEY_CHARS} characters")
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in value):
        raise _bad_key("must be visible ASCII characters")
    return value


def _unescape(inner: str) -> str:
    out = []
    escaped = False
    for ch in inner:
        if escaped:
            if ch not in '"\\':
                raise _bad_key('only \\" and \\\\ may be escaped')
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            raise _bad_key("a quote inside the key must be escaped")
        else:
            out.append(ch)
    if escaped:
        raise _bad_key("the key ends inside an escape")
    return "".join(out)


def _bad_key(message: str) -> InvalidInput:
    return InvalidInput(f"{HEADER}: {message}.", errors=[{"field": HEADER, "message": message}])


class Fingerprint:
    """sha256 over method, origin and path, FINGERPRINT_HEADERS and the
    body's sha256; the body is fed chunk by chunk as the view reads it,
    never buffered.

    The origin (scheme, Host, root path: what every URL in the stored
    response starts with) is part of it, so a response is replayed only to
    a request for the same origin: without QUART_APP_PUBLIC_URL or
    QUART_APP_ALLOWED_HOSTS a first request could name any Host, and its
    URLs must not reach a retry that named another (422 instead)."""

    def __init__(self) -> None:
        self._body = hashlib.sha256()
        self._head = "\n".join(
            [request.method, request.url_root, request.full_path]
            + [f"{name}:{request.headers.get(name, '')}" for name in FINGERPRINT_HEADERS]
        )

    def observe(self, chunk: bytes) -> None:
        self._body.update(chunk)

    def digest(self) -> str:
        text = f"{self._head}\n{self._body.hexdigest()}"
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def observe_body(chunk: bytes) -> None:
    """Body readers call this with every chunk they take from the request."""
    fingerprint: Fingerprint | None = g.get("idempotency_fingerprint")
    if fingerprint is not None:
        fingerprint.observe(chunk)


async def record_response(session: AsyncSession, response: Response) -> None:
    """Store the response for the request's key, in the caller's transaction."""
    held: Claim | None = g.get("idempotency_claim")
    if held is None:
        return
    fingerprint: Fingerprint = g.idempotency_fingerprint
    headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
    stored = StoredResponse(
        fingerprint.digest(), response.status_code, headers, await response.get_data(False)
    )
    await complete(session, held, stored)
    g.idempotency_recorded = True


def _replay(stored: StoredResponse) -> Response:
    response = Response(stored.body, status=stored.status, headers=Headers(stored.headers))
    response.headers[REPLAYED_HEADER] = "true"
    return response


def _lease() -> timedelta:
    return timedelta(seconds=app_state().settings.BODY_DEADLINE) + LEASE_MARGIN


def refuse_idempotency_key(detail: str) -> None:
    """For a create whose answer holds a secret that is never stored (a key,
    a link's URL): no record may keep it, so a key is a 400, not ignored."""
    if HEADER in request.headers:
        raise InvalidInput(detail, errors=[{"field": HEADER, "message": "not accepted here"}])


def idempotent(view: V) -> V:
    @wraps(view)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        key = parse_key(request.headers.get(HEADER))
        if key is None:
            return await view(*args, **kwargs)
        access = optional_access()
        if access is None:
            # Records belong to an account; an anonymous request has none.
            raise _bad_key("needs an API key: a retry is recognised by the account that sent it")
        database = app_state().database
        fingerprint = Fingerprint()
        try:
            held = await claim(database, access.idempotency_owner, key, _lease())
        except KeyInUse:
            raise IdempotencyKeyBusy(
                "A request with this Idempotency-Key is still running."
            ) from None
        except KeyCompleted as done:
            # The body is read (to compare it), never stored.
            async for chunk in request.body:
                fingerprint.observe(chunk)
            if fingerprint.digest() != done.stored.fingerprint:
                raise IdempotencyKeyReused(
                    "This Idempotency-Key was used for a different request."
                ) from None
            return _replay(done.stored)
        g.idempotency_claim = held
        g.idempotency_fingerprint = fingerprint
        try:
            response = await view(*args, **kwargs)
        except BaseException:
            await database.commits.run_to_completion(release(database, held))
            raise
        if not g.get("idempotency_recorded"):
            await database.commits.run_to_completion(release(database, held))
        return response

    return wrapper  # type: ignore[return-value]
