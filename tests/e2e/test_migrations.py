"""A worker starting in its own process at head never imports Alembic."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest


@pytest.mark.empty_database
def test_a_worker_finding_the_schema_at_head_does_not_load_alembic(
    overrides: dict[str, Any],
) -> None:
    """Alembic costs a worker ~9 MiB; at head it is never imported."""
    code = (
        "import asyncio, sys\n"
        "from quart_app import create_app\n"
        f"app = create_app({ {k: str(v) for k, v in overrides.items()}!r})\n"
        "async def main():\n"
        "    async with app.test_app():\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "print('alembic' in sys.modules)\n"
    )
    run = [sys.executable, "-c", code]
    first = subprocess.run(run, capture_output=True, text=True, check=True)
    again = subprocess.run(run, capture_output=True, text=True, check=True)
    assert first.stdout.split() == ["True"]  # a new database: Alembic migrates it
    assert again.stdout.split() == ["False"]
