"""API keys for tests and benchmarks.

Servers and apps started by tests get ``TEST_ADMIN_KEY`` as their
``QUART_APP_ADMIN_KEY``; clients send it unless a test says otherwise.
"""

from __future__ import annotations

from typing import Any

from quart.testing import QuartClient
from werkzeug.datastructures import Headers

# An admin key from the environment: any 32+ characters of a bearer token.
TEST_ADMIN_KEY = "qa_test-admin-key-0123456789abcdefghij"


def bearer(key: str = TEST_ADMIN_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


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
