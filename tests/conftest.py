"""Fixtures every tier may use. Tiers: tests/unit (no app), tests/app (the
app in-process, fixtures in tests/app/conftest.py) and tests/e2e (real
processes, marked e2e; fixtures in tests/e2e/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def overrides(tmp_path: Path) -> dict[str, Any]:
    """Settings overrides for a fresh app: a temp SQLite file and temp storage."""
    return {
        "STORAGE_DIR": tmp_path / "uploads",
        "INSTANCE_DIR": tmp_path / "instance",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'instance' / 'test.sqlite3'}",
        "SECRET_KEY": "test-secret",
        # Every blob in a file, as large ones are: most tests check what the
        # disk holds. tests/app/test_inline_blobs.py covers blobs in rows.
        "INLINE_BLOB_BYTES": 0,
    }
