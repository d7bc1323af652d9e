"""``python -m quart_app backup DEST`` and ``restore SRC``: a round trip
beside a serving app, and every refusal, with its message and exit status
(under load, across processes: tests/e2e/test_backup.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from devtools.app_settings import temp_app_settings
from devtools.auth import bearer
from quart_app import create_app
from quart_app.__main__ import main

# The commands copy an SQLite file; on PostgreSQL they refuse (tested here).
pytestmark = pytest.mark.sqlite_only

SMALL, LARGE = b"kept in its row", os.urandom(300_000)


def use(monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any]) -> None:
    """The settings, as the environment an operator command reads."""
    for name in list(os.environ):
        if name.startswith("QUART_APP_"):
            monkeypatch.delenv(name)
    for name, value in settings.items():
        monkeypatch.setenv(f"QUART_APP_{name}", str(value))


async def command(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def stored_app(overrides: dict[str, Any]) -> dict[str, Any]:
    """Two files, one kept in its blob row and one in a file."""
    settings = {**overrides, "INLINE_BLOB_BYTES": 1024}
    app = create_app(settings)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        for name, data in (("small", SMALL), ("large", LARGE)):
            answer = await client.put(f"/files/{name}", data=data, headers=bearer())
            assert answer.status_code == 201
    return settings


async def test_a_backup_taken_beside_a_serving_app_restores_every_file(
    overrides: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = await stored_app(overrides)
    use(monkeypatch, settings)
    app = create_app(settings)
    backup = tmp_path / "back up #1?"  # read by SQLite through a URI: escaped
    async with app.test_app():  # serving while the copy is taken
        assert await command("backup", str(backup)) == 0
    assert "1 blob file(s)" in capsys.readouterr().out  # the small one is in the database
    fresh = {**temp_app_settings(tmp_path / "fresh"), "INLINE_BLOB_BYTES": 1024}
    use(monkeypatch, fresh)
    assert await command("restore", str(backup)) == 0
    assert "every sha256 verified" in capsys.readouterr().out
    assert await command("check") == 0
    restored = create_app(fresh)
    async with restored.test_app() as test_app:
        client = test_app.test_client()
        for name, data in (("small", SMALL), ("large", LARGE)):
            answer = await client.get(f"/files/{name}/content", headers=bearer())
            assert answer.status_code == 200
            assert (
                hashlib.sha256(await answer.get_data(as_text=False)).digest()
                == hashlib.sha256(data).digest()
            )


def paths_outside_instance(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if "instance" not in p.parts)


@pytest.mark.parametrize(
    ("dest", "message"),
    [
        ("a-file", "exists and is not a directory"),
        ("not-empty", "is not empty; give a new or empty directory"),
        ("no-such-parent/backup", "its parent directory"),
        ("uploads/backup", "is inside the storage directory"),
    ],
)
async def test_backup_refuses_a_bad_dest_and_leaves_it_alone(
    overrides: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    dest: str,
    message: str,
) -> None:
    settings = await stored_app(overrides)
    use(monkeypatch, settings)
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "not-empty").mkdir()
    (tmp_path / "not-empty" / "notes").write_text("mine")
    before = paths_outside_instance(tmp_path)
    assert await command("backup", str(tmp_path / dest)) == 2
    assert message in capsys.readouterr().err
    assert paths_outside_instance(tmp_path) == before


async def test_backup_refuses_without_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, temp_app_settings(tmp_path))
    assert await command("backup", str(tmp_path / "backup")) == 2
    assert "no database at" in capsys.readouterr().err
    assert not (tmp_path / "backup").exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            {"DATABASE_URL": "postgresql+asyncpg://app:hunter2@127.0.0.1:9/quart_app"},
            "use pg_dump / pg_restore and copy the bucket",
        ),
        ({"STORAGE_URL": "s3://bucket/prefix"}, "the storage is s3://bucket/prefix"),
    ],
)
@pytest.mark.parametrize("verb", ["backup", "restore"])
async def test_backup_and_restore_point_postgresql_and_s3_at_the_readme(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    setting: dict[str, str],
    message: str,
    verb: str,
) -> None:
    use(monkeypatch, {**temp_app_settings(tmp_path), **setting})
    assert await command(verb, str(tmp_path / "backup")) == 2
    err = capsys.readouterr().err
    assert message in err and 'README "Backup and restore"' in err
    assert "hunter2" not in err


async def test_restore_refuses_a_non_empty_instance_unless_forced(
    overrides: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = await stored_app(overrides)
    use(monkeypatch, settings)
    assert await command("backup", str(tmp_path / "backup")) == 0
    other = {**temp_app_settings(tmp_path / "other"), "INLINE_BLOB_BYTES": 0}
    app = create_app(other)
    async with app.test_app() as test_app:
        answer = await test_app.test_client().put("/files/x", data=b"other", headers=bearer())
        assert answer.status_code == 201
    use(monkeypatch, other)
    capsys.readouterr()
    assert await command("restore", str(tmp_path / "backup")) == 2
    err = capsys.readouterr().err
    assert "the instance is not empty" in err and "pass --force" in err
    assert await command("restore", str(tmp_path / "backup"), "--force") == 0
    assert await command("check") == 0  # the other blob is gone with its database
    assert "checked 2 file(s)" in capsys.readouterr().out


async def test_restore_refuses_what_is_not_a_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, temp_app_settings(tmp_path / "fresh"))
    (tmp_path / "half").mkdir()
    assert await command("restore", str(tmp_path / "half")) == 2
    assert "holds no complete backup (no MANIFEST.json)" in capsys.readouterr().err
    assert await command("restore", str(tmp_path / "nowhere")) == 2
    assert "is not a directory" in capsys.readouterr().err


async def test_restore_of_a_damaged_backup_fails_before_touching_the_instance(
    overrides: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = await stored_app(overrides)
    use(monkeypatch, settings)
    backup = tmp_path / "backup"
    assert await command("backup", str(backup)) == 0
    sha256 = hashlib.sha256(LARGE).hexdigest()
    blob = backup / "blobs" / sha256[:2] / sha256[2:4] / sha256
    damaged = bytearray(LARGE)
    damaged[1000] ^= 1
    blob.unlink()  # a hard link to the live blob: replaced, not written through
    blob.write_bytes(bytes(damaged))
    fresh = temp_app_settings(tmp_path / "fresh")
    use(monkeypatch, fresh)
    capsys.readouterr()
    assert await command("restore", str(backup)) == 1
    assert f"a damaged blob in the backup: {blob}" in capsys.readouterr().err
    assert not (tmp_path / "fresh" / "instance").exists()
    assert [p for p in (tmp_path / "fresh" / "uploads").rglob("*") if p.is_file()] == []
    blob.unlink()
    assert await command("restore", str(backup)) == 1
    assert f"the backup lacks blob {sha256}" in capsys.readouterr().err
    with (backup / "quart_app.sqlite3").open("ab") as database:
        database.write(b"\0")
    assert await command("restore", str(backup)) == 1
    assert "quart_app.sqlite3 does not match the sha256 in MANIFEST.json" in capsys.readouterr().err
