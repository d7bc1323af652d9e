"""Is the database schema at head? Answered without importing Alembic.

Alembic and its templates, once imported, take memory a worker keeps for
its whole life (README, "Why the code is shaped this way"). A worker that
finds the schema already at head, the usual case on every start after the
first (or after ``python -m quart_app migrate``), never loads it.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSIONS_DIR = MIGRATIONS_DIR / "versions"
_REVISION = re.compile(r"^revision\b[^=]*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\b[^=]*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)


def head_revision() -> str | None:
    """The one revision no other revises; None when that is not clear (let
    Alembic decide)."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in VERSIONS_DIR.glob("[!_]*.py"):
        source = path.read_text(encoding="utf-8")
        revision = _REVISION.search(source)
        if revision is None:
            return None
        revisions.add(revision.group(1))
        down = _DOWN_REVISION.search(source)
        if down is not None:
            revised.add(down.group(1))
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


def known_revisions() -> set[str]:
    """Every revision this release has a migration for."""
    found = (_REVISION.search(p.read_text(encoding="utf-8")) for p in VERSIONS_DIR.glob("[!_]*.py"))
    return {match.group(1) for match in found if match is not None}


async def schema_at_head(engine: AsyncEngine) -> bool:
    head = head_revision()
    if head is None:
        return False
    try:
        async with engine.connect() as conn:
            found = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    except DBAPIError:  # no alembic_version table yet
        return False
    return [row[0] for row in found] == [head]


async def schema_revision(engine: AsyncEngine) -> str | None:
    """The revision the database's schema is at; None when it has none yet."""
    async with engine.connect() as conn:
        exists = await conn.run_sync(lambda sync: inspect(sync).has_table("alembic_version"))
        if not exists:
            return None
        found = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    return ",".join(sorted(row[0] for row in found)) or None
