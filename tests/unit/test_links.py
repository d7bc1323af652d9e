"""Download links without an app: the migration both ways, the settings'
bounds, and the log's view of a link's path."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from quart_app.config import ConfigError, load_settings
from quart_app.db.migrate import alembic_config, upgrade_to_head
from quart_app.db.schema_version import MIGRATIONS_DIR
from quart_app.edge.access_log import logged_path
from quart_app.services.download_links import link_token, new_link_id

REVISION = "0007_download_links"


async def test_the_migration_adds_and_removes_the_links_table(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"
    settings = load_settings({"DATABASE_URL": url}, environ={})
    engine = create_async_engine(url)
    await upgrade_to_head(engine, settings)
    before = ScriptDirectory(str(MIGRATIONS_DIR)).get_revision(REVISION).down_revision
    assert isinstance(before, str)

    def run(connection: Connection, target: str, downgrade: bool) -> list[str]:
        config = alembic_config(settings)
        config.attributes["connection"] = connection
        (command.downgrade if downgrade else command.upgrade)(config, target)
        return inspect(connection).get_table_names()

    async with engine.connect() as conn:
        assert "download_links" not in await conn.run_sync(run, before, True)
        assert "files" in await conn.run_sync(lambda c: inspect(c).get_table_names())
        assert "download_links" in await conn.run_sync(run, REVISION, False)
        await conn.commit()
    await engine.dispose()


def test_the_default_lifetime_may_not_pass_the_longest() -> None:
    with pytest.raises(ConfigError, match="LINK_EXPIRES_SECONDS"):
        load_settings({"LINK_EXPIRES_SECONDS": 601, "LINK_MAX_EXPIRES_SECONDS": 600}, environ={})
    settings = load_settings({"LINK_EXPIRES_SECONDS": 600, "LINK_MAX_EXPIRES_SECONDS": 600})
    assert settings.LINK_EXPIRES_SECONDS == 600


def test_the_log_shows_a_links_id_and_every_other_path_as_it_is() -> None:
    link_id = new_link_id()
    token = link_token(link_id, secrets.token_urlsafe(32))
    assert len(link_id) == 19 and link_id.startswith("dl_")
    assert logged_path(f"/links/{token}") == f"/links/{link_id}..."
    assert logged_path("/links/" + "x" * 5000) == "/links/" + "x" * 19 + "..."
    assert logged_path("/links/abc.secret") == "/links/abc..."
    for path in ("/files/a/links/dl_abc", "/files/links", "/links/", "/users/1/keys"):
        assert logged_path(path) == path
