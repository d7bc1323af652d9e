"""Archive imports across real processes: a worker killed mid-job, two
servers sharing one database, and a server that keeps answering while it
imports."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

from devtools.auth import bearer
from devtools.server import RunningServer, start_server

ENDED = ("succeeded", "failed", "canceled")


def archive(entries: int, size: int, seed: int = 0) -> bytes:
    """A zip of ``entries`` distinct random files of ``size`` bytes, stored."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for i in range(entries):
            zf.writestr(f"dir/{seed}-{i}.bin", os.urandom(size))
    return out.getvalue()


def post(server: RunningServer, data: bytes) -> str:
    response = httpx.post(f"{server.url}/imports", content=data, headers=bearer(), timeout=60)
    assert response.status_code == 202, response.text
    return response.headers["Location"]


def job(location: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(location, headers=bearer(), timeout=10).json()
    return body


def wait(location: str, until: Any, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not until(current := job(location)):
        assert time.monotonic() < deadline, current
        time.sleep(0.05)
    return current


def database(server: RunningServer) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{server.database_path}?mode=ro", uri=True)


def test_a_job_whose_worker_was_killed_runs_again_and_ends_once(tmp_path: Path) -> None:
    env = {"QUART_APP_IMPORT_LEASE_SECONDS": "2", "QUART_APP_IMPORT_POLL_SECONDS": "0.2"}
    first = start_server(tmp_path / "server", env)
    try:
        location = post(first, archive(3000, 4096))
        wait(location, lambda j: j["status"] == "running" and j["progress"]["entries_done"] > 0)
    finally:
        first.stop(signal.SIGKILL)  # mid-job: its files were not committed
    with database(first) as db:
        assert db.execute("SELECT count(*) FROM files").fetchone()[0] == 0
    second = start_server(tmp_path / "server", env)  # same database and storage
    location = location.replace(first.url, second.url)
    try:
        done = wait(location, lambda j: j["status"] in ENDED)
        assert done["status"] == "succeeded", done
        batch_url = done["result"]["batch"]
        batch = httpx.get(batch_url, headers=bearer(), timeout=30).json()
        assert len(batch["files"]) == 3000
        assert len({f["filename"] for f in batch["files"]}) == 3000
    finally:
        second.stop()
    with database(second) as db:
        assert db.execute("SELECT count(*) FROM files").fetchone()[0] == 3000
        assert db.execute("SELECT count(*) FROM batches").fetchone()[0] == 1
        assert db.execute("SELECT attempts FROM import_jobs").fetchone()[0] == 2


def test_two_servers_on_one_database_run_each_job_once(tmp_path: Path) -> None:
    one = start_server(tmp_path / "one", {"QUART_APP_IMPORT_POLL_SECONDS": "0.1"})
    shared = {
        "QUART_APP_DATABASE_URL": one.env["QUART_APP_DATABASE_URL"],
        "QUART_APP_STORAGE_DIR": one.env["QUART_APP_STORAGE_DIR"],
        "QUART_APP_IMPORT_POLL_SECONDS": "0.1",
    }
    two = start_server(tmp_path / "two", shared)
    try:
        locations = [
            post(server, archive(50, 1024, seed=i)) for i, server in enumerate([one, two] * 4)
        ]
        jobs = [wait(location, lambda j: j["status"] in ENDED) for location in locations]
        assert [j["status"] for j in jobs] == ["succeeded"] * 8
    finally:
        one.stop()
        two.stop()
    with database(one) as db:
        assert db.execute("SELECT count(*) FROM files").fetchone()[0] == 8 * 50
        assert {row[0] for row in db.execute("SELECT attempts FROM import_jobs")} == {1}
    ran_on = {
        server.url: [line for line in server.log().splitlines() if '"import ended"' in line]
        for server in (one, two)
    }
    assert sum(len(lines) for lines in ran_on.values()) == 8


def test_the_server_keeps_answering_while_it_imports(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server")
    try:
        location = post(server, archive(40, 2 * 1024 * 1024))  # 80 MiB of entries
        wait(location, lambda j: j["status"] == "running")
        answered: list[tuple[int, int, str]] = []
        while job(location)["status"] == "running":
            health = httpx.get(f"{server.url}/healthz", timeout=5)
            put = httpx.put(
                f"{server.url}/files/during-{len(answered)}",
                content=b"x",
                headers=bearer(),
                timeout=5,
            )
            answered.append((health.status_code, put.status_code, job(location)["status"]))
        assert (200, 201, "running") in answered, answered
        assert job(location)["status"] == "succeeded"
    finally:
        server.stop()
