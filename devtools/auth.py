"""API keys for tests and benchmarks.

Servers and apps started by tests get ``TEST_ADMIN_KEY`` as their
``QUART_APP_ADMIN_KEY``; clients send it unless a test says otherwise.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
from quart.testing import QuartClient
from werkzeug.datastructures import Headers

# An admin key from the environment: any 32+ characters of a bearer token.
TEST_ADMIN_KEY = "qa_test-admin-key-0123456789abcdefghij"


def bearer(key: str = TEST_ADMIN_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def bearer_line(key: str = TEST_ADMIN_KEY) -> str:
    """The header line, CRLF included, for requests written by hand."""
    return f"Authorization: Bearer {key}\r\n"


def create_user_key(
    url: str, scopes: tuple[str, ...] = ("read", "write"), admin_key: str = TEST_ADMIN_KEY
) -> tuple[int, str]:
    """A new user of the server at ``url`` and a key of theirs, made with an
    admin key as an operator would: POST /users, POST /users/{id}/keys.
    Returns the user's id and the key's secret."""
    email = f"user-{secrets.token_hex(6)}@example.com"
    with httpx.Client(base_url=url, headers=bearer(admin_key), timeout=30) as client:
        user = client.post("/users", json={"name": "Key holder", "email": email})
        user.raise_for_status()
        user_id: int = user.json()["id"]
        key = client.post(f"/users/{user_id}/keys", json={"scopes": list(scopes)})
        key.raise_for_status()
        secret: str = key.json()["secret"]
    return user_id, secret


def _keyed(headers: Any, key: str | None) -> Any:
    if key is None:
        return headers
    merged = Headers(headers) if headers is not None else Headers()
    if "Authorization" not in merged:
        merged["Authorization"] = f"Bearer {key}"
    return merged


class KeyedClient(QuartClient):
    """Quart's test client sending ``Authorization: Bearer <key>`` on every
    request that does not set its own (``key = None``: none at all)."""

    key: str | None = TEST_ADMIN_KEY

    async def open(self, path: str, *args: Any, headers: Any = None, **kwargs: Any) -> Any:
        return await super().open(path, *args, headers=_keyed(headers, self.key), **kwargs)

    def request(self, path: str, *args: Any, headers: Any = None, **kwargs: Any) -> Any:
        return super().request(path, *args, headers=_keyed(headers, self.key), **kwargs)
