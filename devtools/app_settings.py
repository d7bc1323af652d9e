"""Settings overrides for an app under test: everything it keeps under one
temporary directory, and the test admin key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .auth import TEST_ADMIN_KEY


def temp_app_settings(root: Path) -> dict[str, Any]:
    """A fresh app's overrides: a SQLite file and storage under ``root``."""
    return {
        "STORAGE_DIR": root / "uploads",
        "INSTANCE_DIR": root / "instance",
        "DATABASE_URL": f"sqlite+aiosqlite:///{root / 'instance' / 'test.sqlite3'}",
        "SECRET_KEY": "test-secret",
        "ADMIN_KEY": TEST_ADMIN_KEY,
        # Every blob in a file, as large ones are: most tests check what the
        # disk holds. tests/app/test_inline_blobs.py covers blobs in rows.
        "INLINE_BLOB_BYTES": 0,
    }
