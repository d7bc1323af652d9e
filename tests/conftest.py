"""Fixtures every tier may use. Tiers: tests/unit (no app), tests/app (the
app in-process, fixtures in tests/app/conftest.py) and tests/e2e (real
processes, marked e2e; fixtures in tests/e2e/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from quart import Quart

from devtools.app_settings import temp_app_settings
from devtools.auth import KeyedClient


@pytest.fixture
def overrides(tmp_path: Path) -> dict[str, Any]:
    """Settings overrides for a fresh app: a temp SQLite file and temp storage."""
    return temp_app_settings(tmp_path)


@pytest.fixture(autouse=True)
def _keyed_test_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every app's test client sends the test admin key (``ADMIN_KEY`` in
    ``overrides``) unless a test sets ``client.key`` or its own header."""
    monkeypatch.setattr(Quart, "test_client_class", KeyedClient)
