"""Fixtures: a fresh app over a temp SQLite file and temp storage per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.testing import QuartClient

from quart_app import create_app


@pytest.fixture
def overrides(tmp_path: Path) -> dict[str, Any]:
    return {
        "STORAGE_DIR": tmp_path / "uploads",
        "INSTANCE_DIR": tmp_path / "instance",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'instance' / 'test.sqlite3'}",
        "SECRET_KEY": "test-secret",
    }


@pytest.fixture
async def app(overrides: dict[str, Any]) -> AsyncIterator[Quart]:
    application = create_app(overrides)
    async with application.test_app() as test_app:
        yield test_app.app  # type: ignore[misc]


@pytest.fixture
def client(app: Quart) -> QuartClient:
    return app.test_client()
