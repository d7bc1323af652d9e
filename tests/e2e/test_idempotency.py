"""python -m quart_app purge-idempotency, run as a real process."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from devtools import PROJECT_ROOT


def test_the_cli_purges_on_demand(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("QUART_APP_")},
        "QUART_APP_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}",
        "QUART_APP_STORAGE_DIR": str(tmp_path / "uploads"),
        "QUART_APP_INSTANCE_DIR": str(tmp_path / "instance"),
        "QUART_APP_IDEMPOTENCY_TTL_SECONDS": "60",
        "PYTHONPATH": str(PROJECT_ROOT),
    }

    def run(command: str = "purge-idempotency") -> str:
        result = subprocess.run(
            [sys.executable, "-m", "quart_app", command],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return result.stdout.strip()

    assert run("migrate") == "database at head"  # the commands refuse a missing database
    assert run() == "0 idempotency record(s) purged"
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        db.executemany(
            "INSERT INTO idempotency_records (owner, key, created_at) VALUES ('anonymous', ?, ?)",
            [("old", "2000-01-01 00:00:00.000000"), ("new", "2999-01-01 00:00:00.000000")],
        )
    assert run() == "1 idempotency record(s) purged"
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        assert db.execute("SELECT key FROM idempotency_records").fetchall() == [("new",)]
