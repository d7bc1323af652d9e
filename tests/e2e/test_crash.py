"""What a 201 promises survives kill -9, and a load of concurrent writers.

The kill moments come from a seeded generator (QUART_APP_CRASH_SEED, default
20261121), so a failure can be replayed exactly."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import httpx

from devtools.auth import bearer
from devtools.server import RunningServer, start_server, worker_pid
from devtools.stored import rows

SEED = int(os.environ.get("QUART_APP_CRASH_SEED", "20261121"))
ROUNDS = 3
KILL_WINDOWS = [(0.02, 0.15), (0.4, 0.9), (1.5, 3.0)]  # seconds after the work starts


def create_user(url: str, email: str) -> tuple[str, Any] | None:
    try:
        response = httpx.post(
            f"{url}/users", json={"name": "n", "email": email}, headers=bearer(), timeout=30
        )
    except httpx.HTTPError:
        return None
    return ("user", response.json()) if response.status_code == 201 else None


def put_file(url: str, name: str, data: bytes) -> tuple[str, Any] | None:
    try:
        response = httpx.put(f"{url}/files/{name}", content=data, headers=bearer(), timeout=30)
    except httpx.HTTPError:
        return None
    if response.status_code != 201:
        return None
    return "file", (name, hashlib.sha256(data).hexdigest())


def kill_9(server: RunningServer) -> None:
    assert server.process is not None
    worker = worker_pid(server)
    for pid in {worker, server.process.pid}:
        os.kill(pid, signal.SIGKILL)
    server.process.wait()
    server.process = None
    deadline = time.monotonic() + 10
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def run_check(server: RunningServer) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quart_app", "check"],
        env=server.env, cwd=server.root, capture_output=True, text=True,
    )  # fmt: skip


def test_kill_9_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    server = start_server(tmp_path / "crash")
    users: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    try:
        for round_ in range(ROUNDS):
            # ~100 MiB a round: the early kill always finds uploads in flight.
            payloads = [rng.randbytes(rng.randint(2 << 20, 8 << 20)) for _ in range(20)]
            with ThreadPoolExecutor(48) as pool:
                # Uploads first, so they are in flight when the kill comes.
                jobs = [
                    pool.submit(put_file, server.url, f"r{round_}-{i}", data)
                    for i, data in enumerate(payloads)
                ]
                jobs += [
                    pool.submit(create_user, server.url, f"r{round_}-{i}@example.com")
                    for i in range(200)
                ]
                # Early, mid-way and late: across the rounds the kills land
                # before, during and after the work's commits.
                time.sleep(rng.uniform(*KILL_WINDOWS[round_]))
                if round_ == ROUNDS - 1:
                    # On a slow, shared machine the late window can still come
                    # before any upload finished: wait for a first one.
                    wait(jobs[:20], timeout=60, return_when=FIRST_COMPLETED)
                kill_9(server)
                results = [job.result() for job in jobs]
            for outcome in results:
                if outcome is None:
                    continue
                kind, value = outcome
                if kind == "user":
                    users.append(value)
                else:
                    files[value[0]] = value[1]
            server.start()  # same database and storage; startup recovers
        # The kills must land mid-work: some of each acknowledged, not all.
        assert 0 < len(users) < 200 * ROUNDS, len(users)
        assert 0 < len(files) < 20 * ROUNDS, len(files)
        for user in users:
            again = httpx.get(f"{server.url}/users/{user['id']}", headers=bearer())
            assert again.status_code == 200 and again.json() == user
        for name, sha256 in files.items():
            content = httpx.get(f"{server.url}/files/{name}/content", headers=bearer())
            assert hashlib.sha256(content.content).hexdigest() == sha256, name
        result = run_check(server)
        assert result.returncode == 0, result.stdout
        assert list((server.storage_dir / "tmp").iterdir()) == []
    finally:
        server.stop()


def test_many_concurrent_writers_no_5xx_no_lock_errors(tmp_path: Path) -> None:
    server = start_server(tmp_path / "load")
    try:
        with ThreadPoolExecutor(64) as pool:
            creates = list(
                pool.map(
                    lambda i: (
                        httpx.post(
                            f"{server.url}/users",
                            json={"name": "n", "email": f"load{i}@example.com"},
                            headers=bearer(),
                            timeout=60,
                        ).status_code
                    ),
                    range(200),
                )
            )
            uploads = list(
                pool.map(
                    lambda i: (
                        httpx.put(
                            f"{server.url}/files/load{i}",
                            content=os.urandom(200_000),
                            headers=bearer(),
                            timeout=60,
                        ).status_code
                    ),
                    range(50),
                )
            )
        assert creates == [201] * 200
        assert uploads == [201] * 50
        assert "database is locked" not in server.log()
        assert rows(server, "users") == 200 and rows(server, "files") == 50
    finally:
        server.stop()
