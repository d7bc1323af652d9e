"""The migration failure docs/RUNBOOK.md quotes, provoked: a database that a
newer release migrated (its revision unknown to this code) stops startup
with the one line quoted there, not Alembic's traceback. (The runbook's
other quotes are checked against the source: tests/unit/test_runbook.py.)"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from devtools import PROJECT_ROOT
from quart_app.config import load_settings
from quart_app.ops.opening import open_database
from quart_app.ops.startup import PREFIX, StartupError

QUOTED_DATABASE = "/srv/quart_app/instance/quart_app.sqlite3"


@pytest.mark.sqlite_only
async def test_a_database_from_a_newer_release_stops_startup_as_the_runbook_says(
    overrides: dict[str, Any],
) -> None:
    settings = load_settings(overrides)
    path = settings.database_url.partition(":///")[2]
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '0010_from_the_future'")
    with pytest.raises(StartupError) as stopped:
        await open_database(settings)
    line = str(stopped.value.code)
    assert line.startswith(PREFIX) and "\n" not in line
    runbook = (PROJECT_ROOT / "docs" / "RUNBOOK.md").read_text()
    assert line.replace(path, QUOTED_DATABASE) in runbook.splitlines()
    # Nothing was changed: the newer release still finds its schema.
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (
            "0010_from_the_future",
        )
