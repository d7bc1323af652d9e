"""``python -m quart_app doctor``, in-process (ops/doctor.diagnose reads the
environment it is given): a healthy set-up is all ``ok``, and each failure
is provoked for real (a database behind head or not there, PostgreSQL not
listening, a read-only storage mount, tmp/ on another filesystem, less room
than one upload at the limit, a guessable admin key, a misspelt variable).
The S3 checks against SeaweedFS and the command's exit status:
tests/e2e/test_doctor.py."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.ports import free_port
from devtools.postgres import PostgresServer
from quart_app.config import load_settings
from quart_app.db.engine import Database
from quart_app.db.migrate import migrate_to
from quart_app.db.schema_version import head_revision
from quart_app.ops.doctor import Check, diagnose, doctor

STRONG_KEY = "qa_" + secrets.token_urlsafe(32)


@pytest.fixture
def environ(tmp_path: Path, sqlite_template: Path) -> dict[str, str]:
    """A healthy set-up: a database at head, storage prepared, a random
    admin key, an upload limit the disk can hold."""
    database = tmp_path / "instance" / "db.sqlite3"
    database.parent.mkdir()
    shutil.copyfile(sqlite_template, database)
    (tmp_path / "uploads").mkdir()
    return {
        "PATH": os.environ.get("PATH", ""),
        "QUART_APP_STORAGE_DIR": str(tmp_path / "uploads"),
        "QUART_APP_INSTANCE_DIR": str(tmp_path / "instance"),
        "QUART_APP_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "QUART_APP_ADMIN_KEY": STRONG_KEY,
        "QUART_APP_MAX_UPLOAD_BYTES": str(1024 * 1024),
    }


async def checks(environ: dict[str, str]) -> dict[str, Check]:
    found = await diagnose(environ)
    by_name = {check.name: check for check in found}
    assert len(by_name) == len(found), [check.line for check in found]
    return by_name


def statuses(found: dict[str, Check]) -> dict[str, str]:
    return {name: check.status for name, check in found.items()}


async def test_a_healthy_set_up_is_all_ok(environ: dict[str, str]) -> None:
    found = await checks(environ)
    assert statuses(found) == {
        name: "ok"
        for name in (
            "config",
            "database",
            "schema",
            "sqlite",
            "clock",
            "storage",
            "storage filesystem",
            "free space",
            "admin key",
        )
    }
    assert "journal_mode wal" in found["sqlite"].detail
    assert "no database server to compare with" in found["clock"].detail
    lines, healthy = await asyncio.to_thread(doctor, environ)
    assert healthy
    assert lines[-1] == "nothing failed"
    assert all(line.startswith("ok   ") for line in lines[:-1])
    # The probes leave nothing behind.
    storage = Path(environ["QUART_APP_STORAGE_DIR"])
    assert [p for p in storage.rglob("*") if p.is_file()] == []
    assert not list(Path(environ["QUART_APP_INSTANCE_DIR"]).glob(".doctor*"))


async def test_a_misspelt_variable_is_named_with_the_closest_setting(
    environ: dict[str, str],
) -> None:
    environ["QUART_APP_MAX_UPLOAD_BYTE"] = "10"
    environ["QUART_APP_NOTHING_LIKE_IT"] = "1"
    lines, healthy = await asyncio.to_thread(doctor, environ)
    assert healthy  # a warning, not a failure
    warnings = [line for line in lines if line.startswith("warn variables:")]
    assert warnings == [
        "warn variables: QUART_APP_MAX_UPLOAD_BYTE is not a setting (ignored): "
        "did you mean QUART_APP_MAX_UPLOAD_BYTES?",
        "warn variables: QUART_APP_NOTHING_LIKE_IT is not a setting (ignored): "
        "remove it, or see README Configuration",
    ]


async def test_a_setting_that_does_not_load_fails_and_stops(environ: dict[str, str]) -> None:
    environ["QUART_APP_ADMIN_KEY"] = "short"
    lines, healthy = await asyncio.to_thread(doctor, environ)
    assert not healthy
    assert len(lines) == 2
    assert lines[0].startswith("FAIL config: QUART_APP_ADMIN_KEY must be at least 32 characters")


@pytest.mark.parametrize(
    "key",
    ["a" * 40, "password" * 5, "qa_0123456789abcdefghijklmnopqrstuvwxyz", "Abc123!" * 6],
)
async def test_a_guessable_admin_key_fails(environ: dict[str, str], key: str) -> None:
    environ["QUART_APP_ADMIN_KEY"] = key
    found = await checks(environ)
    assert found["admin key"].status == "FAIL"
    assert "secrets.token_urlsafe(32)" in found["admin key"].detail
    assert key not in found["admin key"].detail  # never echoed


async def test_no_admin_key_is_fine(environ: dict[str, str]) -> None:
    del environ["QUART_APP_ADMIN_KEY"]
    found = await checks(environ)
    assert found["admin key"].status == "ok"
    assert "keys create" in found["admin key"].detail


async def test_a_database_behind_head(environ: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "instance" / "old.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"
    database = Database(url, 5.0)
    try:
        database.create_file()
        await migrate_to(
            database.engine, load_settings({"DATABASE_URL": url}, environ={}), "0008_imports"
        )
    finally:
        await database.dispose()
    environ["QUART_APP_DATABASE_URL"] = url
    found = await checks(environ)
    assert found["database"].status == "ok"
    assert found["schema"].status == "warn"  # serve would migrate it
    assert f"at 0008_imports, behind head {head_revision()}" in found["schema"].detail
    environ["QUART_APP_AUTO_MIGRATE"] = "0"
    found = await checks(environ)
    assert found["schema"].status == "FAIL"
    assert "python -m quart_app migrate" in found["schema"].detail


async def test_no_database_file(environ: dict[str, str], tmp_path: Path) -> None:
    environ["QUART_APP_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'instance' / 'no.db'}"
    environ["QUART_APP_AUTO_MIGRATE"] = "0"
    found = await checks(environ)
    assert found["database"].status == "FAIL"
    assert "no database at" in found["database"].detail
    assert not (tmp_path / "instance" / "no.db").exists()  # the doctor made none


async def test_an_unreachable_postgresql(environ: dict[str, str]) -> None:
    port = free_port()  # nothing listens there
    environ["QUART_APP_DATABASE_URL"] = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x"
    environ["QUART_APP_DATABASE_CONNECT_TIMEOUT"] = "2"
    found = await checks(environ)
    assert found["database"].status == "FAIL"
    assert f"127.0.0.1:{port}" in found["database"].detail
    assert "is it running" in found["database"].detail
    # The storage is still checked.
    assert found["storage"].status == "ok"


async def test_postgresql_version_and_clock(
    environ: dict[str, str], postgres: PostgresServer, postgres_url: str
) -> None:
    environ["QUART_APP_DATABASE_URL"] = postgres_url
    found = await checks(environ)
    assert statuses(found)["database"] == "ok"
    assert found["schema"].status == "ok"
    assert found["postgresql"].status == "ok"
    assert found["postgresql"].detail.startswith("server 1")
    assert found["clock"].status == "ok"
    assert "the database server's" in found["clock"].detail
    assert "sqlite" not in found


@pytest.fixture
def read_only_storage(environ: dict[str, str]) -> Iterator[Path]:
    """The storage directory as a read-only bind mount of itself (what stops
    root, unlike chmod)."""
    storage = environ["QUART_APP_STORAGE_DIR"]
    bound = subprocess.run(["mount", "--bind", storage, storage], capture_output=True, text=True)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.strip()}")
    try:
        remounted = subprocess.run(
            ["mount", "-o", "remount,ro,bind", storage], capture_output=True, text=True
        )
        assert remounted.returncode == 0, remounted.stderr
        yield Path(storage)
    finally:
        subprocess.run(["umount", "-l", storage], check=False)


async def test_read_only_storage_fails(environ: dict[str, str], read_only_storage: Path) -> None:
    found = await checks(environ)
    assert found["storage"].status == "FAIL"
    assert "Read-only file system" in found["storage"].detail
    assert "make it writable" in found["storage"].detail
    assert found["database"].status == "ok"


async def test_temp_files_on_another_filesystem_fail(
    environ: dict[str, str], tmp_path: Path
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no /dev/shm on a filesystem of its own")
    elsewhere = shm / f"quart_app_doctor_{secrets.token_hex(4)}"
    elsewhere.mkdir()
    try:
        (Path(environ["QUART_APP_STORAGE_DIR"]) / "tmp").symlink_to(elsewhere)
        found = await checks(environ)
    finally:
        shutil.rmtree(elsewhere)
    assert found["storage"].status == "ok"  # writing there works
    assert found["storage filesystem"].status == "FAIL"
    assert found["storage filesystem"].detail.startswith("tmp/ not on blobs/'s filesystem")
    assert "EXDEV" in found["storage filesystem"].detail


async def test_less_room_than_one_upload_at_the_limit_fails(environ: dict[str, str]) -> None:
    free = shutil.disk_usage(environ["QUART_APP_STORAGE_DIR"]).free
    environ["QUART_APP_MAX_UPLOAD_BYTES"] = str(free * 2)
    found = await checks(environ)
    assert found["free space"].status == "FAIL"
    assert "an upload at the limit would not fit" in found["free space"].detail
    environ["QUART_APP_MAX_UPLOAD_BYTES"] = str(free // 2)
    assert (await checks(environ))["free space"].status == "warn"


async def test_storage_not_created_yet_is_a_warning(
    environ: dict[str, str], tmp_path: Path
) -> None:
    environ["QUART_APP_STORAGE_DIR"] = str(tmp_path / "later" / "uploads")
    found = await checks(environ)
    assert found["storage"].status == "warn"
    assert "serve creates it" in found["storage"].detail
    assert not (tmp_path / "later").exists()
