"""The database or the storage unusable while a real Hypercorn serves: each
request gets a 503 (507 for space) problem with Retry-After within
QUART_APP_DATABASE_TIMEOUT (plus a margin), never a 500 or a long hang;
/readyz says not ready meanwhile; nothing that got a 2xx is lost; and the
service recovers by itself once the fault is gone."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path, PurePath
from typing import Any

import httpx
import pytest

from devtools.auth import bearer
from devtools.form_data import multipart, multipart_headers, part
from devtools.processes import tmpfs
from devtools.server import RunningServer, start_server
from devtools.stored import rows, temp_files

TIMEOUT = 1.0
FAULT_ENV = {"QUART_APP_DATABASE_TIMEOUT": str(TIMEOUT)}
TUS = {"Tus-Resumable": "1.0.0"}


def create_user(server: RunningServer, email: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/users", json={"name": "N", "email": email}, headers=bearer(), timeout=30
    )


def upload(server: RunningServer, data: bytes, name: str) -> httpx.Response:
    body = multipart(part("file", data, name))
    return httpx.post(
        f"{server.url}/files", content=body, headers={**multipart_headers(), **bearer()}, timeout=30
    )


def put_file(server: RunningServer, file_id: str, data: bytes) -> httpx.Response:
    return httpx.put(f"{server.url}/files/{file_id}", content=data, headers=bearer(), timeout=30)


def create_tus_upload(server: RunningServer) -> httpx.Response:
    return httpx.post(
        f"{server.url}/uploads", headers={**TUS, "Upload-Length": "10", **bearer()}, timeout=30
    )


def readyz(server: RunningServer) -> httpx.Response:
    return httpx.get(f"{server.url}/readyz", timeout=30)


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_retry_later(
    response: httpx.Response, elapsed: float, code: str, status: int = 503
) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == f"urn:quart-app:problem:{code}"
    assert int(response.headers["retry-after"]) > 0
    assert elapsed < TIMEOUT + 1, f"answered after {elapsed:.2f} s"


def part_files(server: RunningServer) -> list[PurePath]:
    return [p for p in temp_files(server.storage_dir) if p.name.endswith(".part")]


def blob_count(server: RunningServer) -> int:
    return sum(1 for p in (server.storage_dir / "blobs").rglob("*") if p.is_file())


def assert_still_there(server: RunningServer, users: list[Any], files: list[Any]) -> None:
    """Everything that was acknowledged reads back as it was acknowledged."""
    for user in users:
        assert httpx.get(f"{server.url}/users/{user['id']}", headers=bearer()).json() == user
    for file in files:
        assert httpx.get(f"{server.url}/files/{file['id']}", headers=bearer()).json() == file
        content = httpx.get(f"{server.url}/files/{file['id']}/content", headers=bearer())
        assert content.status_code == 200
    assert rows(server, "users") == len(users)
    assert rows(server, "files") == len(files)


@contextmanager
def running(tmp_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[RunningServer]:
    server = start_server(tmp_path / "server", {**FAULT_ENV, **(extra_env or {})})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def faulty_server(tmp_path: Path) -> Iterator[RunningServer]:
    with running(tmp_path) as server:
        yield server


def test_a_database_locked_by_another_process_is_503_then_recovers(
    faulty_server: RunningServer,
) -> None:
    server = faulty_server
    users = [create_user(server, "before@example.com").json()]
    files = [upload(server, b"before", "before.txt").json()]

    holder = sqlite3.connect(server.database_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        calls = [
            lambda: create_user(server, "a@example.com"),
            lambda: create_user(server, "b@example.com"),
            lambda: upload(server, os.urandom(5000), "a.bin"),
            lambda: upload(server, os.urandom(5000), "b.bin"),
            lambda: put_file(server, "put-while-locked", os.urandom(5000)),
            lambda: create_tus_upload(server),
            lambda: readyz(server),
        ]
        with ThreadPoolExecutor(len(calls)) as pool:
            answers = list(pool.map(timed, calls))
        for response, elapsed in answers:
            assert_retry_later(response, elapsed, "database-unavailable")
        # Reads do not need the write lock.
        assert (
            httpx.get(f"{server.url}/users/{users[0]['id']}", headers=bearer()).status_code == 200
        )
        # A failed group commit leaves none of its bytes behind.
        assert part_files(server) == []
        assert list((server.storage_dir / "partial").iterdir()) == []
        assert blob_count(server) == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    assert readyz(server).status_code == 200
    created = create_user(server, "after@example.com")
    assert created.status_code == 201
    users.append(created.json())
    stored = upload(server, b"after", "after.txt")
    assert stored.status_code == 201
    files.append(stored.json())
    assert_still_there(server, users, files)
    assert temp_files(server.storage_dir) == []
    assert blob_count(server) == 2


def test_a_database_file_moved_away_or_deleted_is_never_written_to(
    faulty_server: RunningServer,
) -> None:
    server = faulty_server
    users = [create_user(server, "before@example.com").json()]
    database = server.database_path
    moved = database.with_name("moved-away.sqlite3")

    # Moved away: the connections still open it would write to a file no
    # longer at the path; every write is refused instead.
    database.rename(moved)
    for call in (
        lambda: create_user(server, "lost@example.com"),
        lambda: upload(server, b"lost", "lost.txt"),
        lambda: readyz(server),
    ):
        assert_retry_later(*timed(call), "database-unavailable")
    # Moved back: the same file, served again without a restart.
    moved.rename(database)
    assert readyz(server).status_code == 200
    created = create_user(server, "back@example.com")
    assert created.status_code == 201
    users.append(created.json())
    assert_still_there(server, users, [])

    # Deleted: never a 2xx for a write, never an empty database in its place.
    database.unlink()
    for call in [
        *(lambda i=i: create_user(server, f"gone{i}@example.com") for i in range(3)),
        *(lambda: upload(server, os.urandom(100), "gone.bin") for _ in range(3)),
        lambda: readyz(server),
    ]:
        assert_retry_later(*timed(call), "database-unavailable")
    assert not database.exists()
    assert part_files(server) == []


def mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def read_only_storage(
    faulty_server: RunningServer,
) -> Iterator[tuple[RunningServer, Callable[[bool], None]]]:
    """The server, and a switch that makes its storage directory a read-only
    bind mount of itself (what stops root, unlike chmod) or writable again."""
    storage = str(faulty_server.storage_dir)
    bound = mount("--bind", storage, storage)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.strip()}")

    def read_only(on: bool) -> None:
        result = mount("-o", f"remount,{'ro' if on else 'rw'},bind", storage)
        assert result.returncode == 0, result.stderr

    try:
        yield faulty_server, read_only
    finally:
        subprocess.run(["umount", "-l", storage], check=False)


def test_read_only_storage_is_503_and_leaves_nothing(
    read_only_storage: tuple[RunningServer, Callable[[bool], None]],
) -> None:
    server, read_only = read_only_storage
    users: list[Any] = []
    files = [upload(server, b"before", "before.txt").json()]

    read_only(True)
    for call in (
        lambda: upload(server, os.urandom(5000), "a.bin"),
        lambda: put_file(server, "put-while-read-only", os.urandom(5000)),
        lambda: create_tus_upload(server),
        lambda: httpx.delete(f"{server.url}/files/{files[0]['id']}", headers=bearer()),
        lambda: readyz(server),
    ):
        assert_retry_later(*timed(call), "storage-unavailable")
    # What needs no storage writes still works.
    created = create_user(server, "still@example.com")
    assert created.status_code == 201
    users.append(created.json())
    assert_still_there(server, users, files)

    read_only(False)
    assert readyz(server).status_code == 200
    stored = upload(server, b"after", "after.txt")
    assert stored.status_code == 201
    files.append(stored.json())
    assert_still_there(server, users, files)
    assert temp_files(server.storage_dir) == []
    assert list((server.storage_dir / "partial").iterdir()) == []
    assert blob_count(server) == 2


@pytest.fixture
def tiny_database_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "database-disk"
    with tmpfs(mount_point, "2m") as refused:
        if refused is not None:
            pytest.skip(f"cannot mount a tmpfs here: {refused}")
        yield mount_point


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_full_database_disk_is_507_then_recovers(
    tmp_path: Path, tiny_database_disk: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tiny_database_disk / 'db.sqlite3'}"
    with running(tmp_path, {"QUART_APP_DATABASE_URL": url}) as server:
        users = [create_user(server, "before@example.com").json()]
        # A reader keeps the WAL from starting over, so a commit needs new
        # space for its pages instead of reusing the log's.
        reader = sqlite3.connect(server.database_path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM users").fetchone()
        filler = fill(tiny_database_disk)
        try:
            for index in range(3):
                response, elapsed = timed(partial(create_user, server, f"f{index}@example.com"))
                assert_retry_later(response, elapsed, "insufficient-storage", 507)
        finally:
            filler.unlink()
            reader.execute("ROLLBACK")
            reader.close()
        created = create_user(server, "after@example.com")
        assert created.status_code == 201
        users.append(created.json())
        assert_still_there(server, users, [])
