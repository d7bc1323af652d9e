from __future__ import annotations

import gc
import shutil
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.testing import QuartClient

from quart_app import create_app
from quart_app.db.engine import Database
from quart_app.state import app_state


async def test_healthz(client: QuartClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "ok"}


async def test_readyz_when_all_is_well(client: QuartClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "ready"}


@pytest.mark.local_storage_only
async def test_readyz_503_when_storage_is_not_writable(
    app: Quart, client: QuartClient, overrides: dict[str, Any]
) -> None:
    storage: Path = overrides["STORAGE_DIR"]
    shutil.rmtree(storage)
    storage.write_text("a file where the directory should be")
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.content_type == "application/problem+json"
    assert "storage" in (await response.get_json())["detail"]


async def test_readyz_503_when_database_is_unreachable(
    app: Quart, client: QuartClient, tmp_path: Path
) -> None:
    working = app_state(app).database
    unreachable = Database(f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'x.sqlite3'}", 1.0)
    app_state(app).database = unreachable
    try:
        response = await client.get("/readyz")
    finally:
        app_state(app).database = working
        await unreachable.dispose()
    assert response.status_code == 503
    assert "database" in (await response.get_json())["detail"]


async def test_startup_freezes_its_objects_out_of_the_collectors_way(
    overrides: dict[str, Any],
) -> None:
    """The objects alive after startup are frozen (gc.freeze): full
    collections under load no longer walk them (the p99 figure in README)."""
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    async with create_app(overrides).test_app():
        assert gc.get_freeze_count() > 10_000
