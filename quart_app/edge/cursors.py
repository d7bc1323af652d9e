"""Opaque, signed keyset cursors for list endpoints.

A cursor names the last key a page showed, for one resource. It is signed so
that a forged or edited cursor is refused (400) instead of silently paging
from somewhere else. Keyset paging over a key that only grows visits every
row that existed when paging began exactly once, whatever is added meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

from quart_app.errors import InvalidCursor, InvalidInput

SIGNATURE_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class CursorCodec:
    secret: bytes

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self.secret, payload, hashlib.sha256).digest()[:SIGNATURE_BYTES]

    def encode(self, resource: str, after: int) -> str:
        payload = json.dumps({"r": resource, "after": after}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def decode(self, resource: str, cursor: str) -> int:
        try:
            payload_text, signature_text = cursor.split(".")
            payload = _unb64(payload_text)
            signature = _unb64(signature_text)
        except (ValueError, binascii.Error):
            raise InvalidCursor("The cursor is not one this server issued.") from None
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise InvalidCursor("The cursor is not one this server issued.")
        data = json.loads(payload)
        after = data.get("after")
        if data.get("r") != resource or not isinstance(after, int) or after < 0:
            raise InvalidCursor("The cursor belongs to another list.")
        return after


def parse_limit(raw: str | None, default: int, maximum: int) -> int:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not 1 <= int(raw) <= maximum:
        raise InvalidInput(
            f"limit must be a whole number from 1 to {maximum}.",
            errors=[{"field": "limit", "message": f"must be an integer from 1 to {maximum}"}],
        )
    return int(raw)
