from __future__ import annotations

from pathlib import Path

import pytest

from devtools import PROJECT_ROOT
from quart_app.config import ConfigError, Settings, load_settings, settings_table
from quart_app.ops.startup import describe_database


def test_defaults_use_sqlite_in_instance_and_uploads_dir() -> None:
    settings = load_settings(environ={})
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.database_url.endswith("/instance/quart_app.sqlite3")
    assert Path.cwd() / "uploads" == settings.STORAGE_DIR
    assert settings.AUTO_MIGRATE is True
    assert settings.MAX_UPLOAD_BYTES == 5 * 1024**3


def test_every_setting_comes_from_its_environment_variable() -> None:
    env = {
        "QUART_APP_DATABASE_URL": "sqlite+aiosqlite:////tmp/x/db.sqlite3",
        "QUART_APP_STORAGE_DIR": "/tmp/elsewhere",
        "QUART_APP_MAX_UPLOAD_BYTES": "1234",
        "QUART_APP_AUTO_MIGRATE": "no",
        "QUART_APP_BODY_IDLE_TIMEOUT": "2.5",
    }
    settings = load_settings(environ=env)
    assert settings.database_url == "sqlite+aiosqlite:////tmp/x/db.sqlite3"
    assert Path("/tmp/elsewhere") == settings.STORAGE_DIR
    assert settings.MAX_UPLOAD_BYTES == 1234
    assert settings.AUTO_MIGRATE is False
    assert settings.BODY_IDLE_TIMEOUT == 2.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("YES", True), ("0", False), ("False", False), ("no", False)],
)
def test_booleans_accept_the_documented_spellings(text: str, expected: bool) -> None:
    assert load_settings(environ={"QUART_APP_AUTO_MIGRATE": text}).AUTO_MIGRATE is expected


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUART_APP_MAX_JSON_BYTES", "10")
    assert load_settings({"MAX_JSON_BYTES": 20}).MAX_JSON_BYTES == 20


def test_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="NOPE"):
        load_settings({"NOPE": 1}, environ={})


def test_database_inside_storage_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="STORAGE_DIR"):
        load_settings(
            {
                "STORAGE_DIR": tmp_path,
                "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}",
            },
            environ={},
        )


def test_readme_documents_every_variable() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    for variable, _, _ in settings_table():
        assert f"`{variable}`" in readme, variable
    assert len(settings_table()) == len(Settings.__dataclass_fields__)


def test_relative_paths_are_made_absolute_against_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        environ={
            "QUART_APP_STORAGE_DIR": "data/uploads",
            "QUART_APP_DATABASE_URL": "sqlite+aiosqlite:///db/app.sqlite3",
        }
    )
    assert tmp_path / "data" / "uploads" == settings.STORAGE_DIR
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'db' / 'app.sqlite3'}"


def test_a_database_url_sqlalchemy_cannot_read_stops_startup() -> None:
    with pytest.raises(ConfigError, match="QUART_APP_DATABASE_URL") as raised:
        load_settings(environ={"QUART_APP_DATABASE_URL": "not a url with a p4ssword"})
    assert "p4ssword" not in str(raised.value)


def test_the_database_is_described_without_its_password() -> None:
    url = "postgresql+asyncpg://app:s3cret@db.example:5432/app"
    assert describe_database(url) == "postgresql+asyncpg://app:***@db.example:5432/app"


def test_a_rate_window_longer_than_the_idle_time_is_refused() -> None:
    with pytest.raises(ConfigError, match="TRANSFER_RATE_WINDOW"):
        load_settings({"TRANSFER_RATE_WINDOW": 90, "IDLE_TIMEOUT": 60}, environ={})
    load_settings(
        {"TRANSFER_RATE_WINDOW": 90, "IDLE_TIMEOUT": 60, "MIN_TRANSFER_RATE": 0}, environ={}
    )
