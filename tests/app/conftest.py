"""The app tier: in-process through Quart's test client, a fresh app over a
temp SQLite file and temp storage per test (``overrides``, tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import Quart
from quart.testing import QuartClient

from devtools.quart_client import as_quart_client
from quart_app import create_app


@pytest.fixture
async def app(overrides: dict[str, Any]) -> AsyncIterator[Quart]:
    application = create_app(overrides)
    async with application.test_app():
        yield application


@pytest.fixture
def client(app: Quart) -> QuartClient:
    return as_quart_client(app.test_client())
