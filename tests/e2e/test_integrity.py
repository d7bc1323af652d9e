"""Crash recovery at startup and `python -m quart_app check [--repair]`."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devtools import PROJECT_ROOT
from devtools.stored import blob_files
from quart_app import create_app

# Also on PostgreSQL by default (tests/conftest.py).
pytestmark = pytest.mark.postgresql

OLD = 10**9  # an mtime long before any deadline


def run_check(overrides: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUART_APP_")}
    env.update(
        {
            "QUART_APP_STORAGE_DIR": str(overrides["STORAGE_DIR"]),
            "QUART_APP_INSTANCE_DIR": str(overrides["INSTANCE_DIR"]),
            "QUART_APP_DATABASE_URL": overrides["DATABASE_URL"],
            "PYTHONPATH": str(PROJECT_ROOT),
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "quart_app", "check", *args],
        env=env, capture_output=True, text=True,
    )  # fmt: skip


async def store_two_files(overrides: dict[str, Any]) -> dict[str, str]:
    app = create_app(overrides)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        for name, data in (("keep", b"kept bytes"), ("gone", b"bytes that vanish")):
            assert (await client.put(f"/files/{name}", data=data)).status_code == 201
    return {
        "keep": hashlib.sha256(b"kept bytes").hexdigest(),
        "gone": hashlib.sha256(b"bytes that vanish").hexdigest(),
    }


def blob_path(storage: Path, sha256: str) -> Path:
    return storage / "blobs" / sha256[:2] / sha256[2:4] / sha256


async def test_a_healthy_store_checks_clean(overrides: dict[str, Any]) -> None:
    await store_two_files(overrides)
    result = run_check(overrides)
    assert result.returncode == 0, result.stdout
    assert "checked 2 file(s)" in result.stdout and "all is well" in result.stdout


async def test_check_reports_damage_and_repair_removes_only_orphans(
    overrides: dict[str, Any],
) -> None:
    shas = await store_two_files(overrides)
    storage = Path(overrides["STORAGE_DIR"])
    blob_path(storage, shas["gone"]).unlink()  # a row whose bytes are missing
    blob_path(storage, shas["keep"]).write_bytes(b"tampered")  # wrong bytes
    orphan = hashlib.sha256(b"orphan").hexdigest()  # bytes no row refers to
    blob_path(storage, orphan).parent.mkdir(parents=True, exist_ok=True)
    blob_path(storage, orphan).write_bytes(b"orphan")
    stale = storage / "tmp" / "dead.part"
    stale.write_bytes(b"half an upload")
    os.utime(stale, (OLD, OLD))
    fresh = storage / "tmp" / f"{os.getpid()}-in-flight.part"  # a live owner
    fresh.write_bytes(b"someone is uploading")
    dead_owner = storage / "tmp" / f"{2**22 + 1}-killed.part"  # above pid_max: gone
    dead_owner.write_bytes(b"a killed worker's upload")
    partial = storage / "partial" / "forgotten"
    partial.write_bytes(b"x")
    os.utime(partial, (OLD, OLD))

    report = run_check(overrides)
    assert report.returncode == 1
    out = report.stdout
    assert "file whose bytes are missing: gone" in out
    assert "file whose bytes do not match its size and sha256: keep" in out
    assert f"orphan blob (no row): {orphan}" in out
    assert "stale temp file: dead.part" in out and "in-flight.part" not in out
    assert "killed.part" in out
    assert "orphan partial upload: forgotten" in out

    repaired = run_check(overrides, "--repair")
    assert repaired.returncode == 1  # rows with bad bytes remain: a person decides
    assert not blob_path(storage, orphan).exists()
    assert not stale.exists() and fresh.exists() and not partial.exists()
    assert not dead_owner.exists()
    assert blob_path(storage, shas["keep"]).exists()  # bytes under a row stay
    assert "file whose bytes are missing: gone" in repaired.stdout


async def test_startup_restores_bytes_retired_by_a_transaction_that_never_committed(
    overrides: dict[str, Any],
) -> None:
    shas = await store_two_files(overrides)
    storage = Path(overrides["STORAGE_DIR"])
    # A delete renamed the blob to trash, then the process was killed before
    # its commit: SQLite rolled the rows back, the bytes sit in trash.
    blob_path(storage, shas["keep"]).rename(storage / "trash" / f"{shas['keep']}.crashed")
    # And a committed delete whose purge never ran: garbage.
    garbage = hashlib.sha256(b"deleted for real").hexdigest()
    (storage / "trash" / f"{garbage}.committed").write_bytes(b"deleted for real")
    app = create_app(overrides)
    async with app.test_app() as test_app:
        content = await test_app.test_client().get("/files/keep/content")
        assert await content.get_data() == b"kept bytes"
    assert list((storage / "trash").iterdir()) == []
    assert len(blob_files(storage)) == 2
    assert run_check(overrides).returncode == 0


async def test_startup_removes_bytes_published_by_a_transaction_that_never_committed(
    overrides: dict[str, Any],
) -> None:
    shas = await store_two_files(overrides)
    storage = Path(overrides["STORAGE_DIR"])
    dead = 2**22 + 1  # above any pid_max: no such process
    # Renamed into place, then killed before the commit: no row.
    doubtful = hashlib.sha256(b"never committed").hexdigest()
    blob_path(storage, doubtful).parent.mkdir(parents=True, exist_ok=True)
    blob_path(storage, doubtful).write_bytes(b"never committed")
    (storage / "tmp" / f"{dead}-publishing-{doubtful}").touch()
    # Killed after the commit, before the marker went: the row stands.
    (storage / "tmp" / f"{dead}-publishing-{shas['keep']}").touch()
    app = create_app(overrides)
    async with app.test_app():
        pass
    assert not blob_path(storage, doubtful).exists()
    assert blob_path(storage, shas["keep"]).exists()
    assert list((storage / "tmp").iterdir()) == []
    assert run_check(overrides).returncode == 0


async def test_check_reports_a_live_upload_whose_partial_bytes_are_gone(
    overrides: dict[str, Any],
) -> None:
    """A live upload whose partial file lost committed bytes cannot go on:
    reported, never repaired (a person ends it); a healthy one is not."""
    app = create_app(overrides)
    tus = {"Tus-Resumable": "1.0.0"}
    ids = []
    async with app.test_app() as test_app:
        client = test_app.test_client()
        for _ in range(2):
            made = await client.post("/uploads", headers={**tus, "Upload-Length": "10"})
            upload_id = made.headers["Location"].rsplit("/", 1)[1]
            patched = await client.patch(
                f"/uploads/{upload_id}",
                data=b"abcd",
                headers={
                    **tus,
                    "Upload-Offset": "0",
                    "Content-Type": "application/offset+octet-stream",
                },
            )
            assert patched.status_code == 204
            ids.append(upload_id)
    healthy, broken = ids
    os.truncate(Path(overrides["STORAGE_DIR"]) / "partial" / broken, 2)
    result = run_check(overrides, "--repair")
    assert result.returncode == 1
    assert f"upload whose partial bytes are missing: {broken}" in result.stdout
    assert healthy not in result.stdout
    assert (Path(overrides["STORAGE_DIR"]) / "partial" / broken).exists()
