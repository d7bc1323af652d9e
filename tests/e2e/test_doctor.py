"""``python -m quart_app doctor`` as an operator runs it: its exit status,
and the S3 checks against a real SeaweedFS (right and wrong credentials).
The other checks, each failure provoked: tests/app/test_doctor.py."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools import PROJECT_ROOT
from devtools.seaweed import Seaweed


@pytest.fixture
def environ(tmp_path: Path, sqlite_template: Path) -> dict[str, str]:
    database = tmp_path / "instance" / "db.sqlite3"
    database.parent.mkdir()
    (tmp_path / "uploads").mkdir()
    shutil.copyfile(sqlite_template, database)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUART_APP_", "AWS_"))}
    env.update(
        {
            "PYTHONPATH": str(PROJECT_ROOT),
            "QUART_APP_STORAGE_DIR": str(tmp_path / "uploads"),
            "QUART_APP_INSTANCE_DIR": str(tmp_path / "instance"),
            "QUART_APP_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "QUART_APP_ADMIN_KEY": "qa_" + secrets.token_urlsafe(32),
            "QUART_APP_MAX_UPLOAD_BYTES": str(1024 * 1024),
        }
    )
    return env


def doctor(environ: dict[str, str], tmp_path: Path) -> tuple[int, list[str]]:
    result = subprocess.run(
        [sys.executable, "-m", "quart_app", "doctor"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stderr == ""
    return result.returncode, result.stdout.splitlines()


def line(lines: list[str], name: str) -> str:
    [found] = [x for x in lines if x.split(" ", 1)[-1].lstrip().startswith(name + ":")]
    return found


def test_exit_status_is_zero_when_nothing_failed(environ: dict[str, str], tmp_path: Path) -> None:
    status, lines = doctor(environ, tmp_path)
    assert status == 0, lines
    assert lines[-1] == "nothing failed"
    assert all(x.startswith("ok   ") for x in lines[:-1]), lines


def test_exit_status_is_one_naming_what_failed(environ: dict[str, str], tmp_path: Path) -> None:
    environ["QUART_APP_AUTO_MIGRATE"] = "0"
    environ["QUART_APP_DATABASE_URL"] += ".missing"
    status, lines = doctor(environ, tmp_path)
    assert status == 1
    assert line(lines, "database").startswith("FAIL database: no database at")
    assert lines[-1] == "1 check(s) failed"


def test_s3_bucket_reachable_with_the_given_credentials(
    environ: dict[str, str], tmp_path: Path, s3_env: dict[str, str]
) -> None:
    status, lines = doctor({**environ, **s3_env}, tmp_path)
    assert status == 0, lines
    assert line(lines, "storage").startswith("ok   storage: bucket blobs at http://127.0.0.1:")
    assert "put, read back and deleted" in line(lines, "storage")


def test_s3_wrong_credentials_fail(
    environ: dict[str, str], tmp_path: Path, seaweed: Seaweed
) -> None:
    wrong = seaweed.env(f"t-{secrets.token_hex(6)}", secret="not-the-secret-0123456789")
    status, lines = doctor({**environ, **wrong}, tmp_path)
    assert status == 1
    storage = line(lines, "storage")
    assert storage.startswith("FAIL storage: s3://blobs/")
    assert "cannot reach the bucket: S3 answered" in storage
    assert "AWS_SECRET_ACCESS_KEY" in storage
    assert "not-the-secret" not in "\n".join(lines)
