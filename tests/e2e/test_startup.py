"""Starting fails loudly: the serve command (what `make run` runs) and the
plain hypercorn command, as real processes, end with a non-zero exit status
and one line naming the cause, never a traceback and a clean exit."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devtools import PROJECT_ROOT
from devtools.ports import free_port

HYPERCORN_TOML = str(PROJECT_ROOT / "hypercorn.toml")
# The newest migration (revisions are numbered in order): what a new
# database is migrated to.
HEAD_REVISION = max(
    p.stem for p in (PROJECT_ROOT / "quart_app" / "db" / "migrations" / "versions").glob("0*.py")
)


@dataclass
class Place:
    root: Path
    port: int
    env: dict[str, str]

    @property
    def database(self) -> Path:
        return self.root / "instance" / "db.sqlite3"


@pytest.fixture
def place(tmp_path: Path) -> Place:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUART_APP_")}
    env.update(
        {
            "PYTHONPATH": str(PROJECT_ROOT),
            "QUART_APP_STORAGE_DIR": str(tmp_path / "uploads"),
            "QUART_APP_INSTANCE_DIR": str(tmp_path / "instance"),
            "QUART_APP_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'instance' / 'db.sqlite3'}",
            "QUART_APP_DATABASE_TIMEOUT": "1",
        }
    )
    return Place(tmp_path, free_port(), env)


def serve_command(place: Place, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "quart_app",
        "serve",
        "--config",
        HYPERCORN_TOML,
        "--bind",
        f"127.0.0.1:{place.port}",
        *extra,
    ]


def hypercorn_command(place: Place, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hypercorn",
        "-c",
        HYPERCORN_TOML,
        "--bind",
        f"127.0.0.1:{place.port}",
        *extra,
        "quart_app:create_app()",
    ]


def run(place: Place, argv: list[str], **env: str) -> tuple[int, list[str], float]:
    """Exit status, stderr lines, seconds taken."""
    started = time.monotonic()
    result = subprocess.run(
        argv,
        cwd=place.root,
        env={**place.env, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode, result.stderr.splitlines(), time.monotonic() - started


def not_logs(lines: list[str]) -> list[str]:
    """The lines that are not the app's JSON logs (the startup line)."""
    return [line for line in lines if not line.startswith("{")]


def assert_fails_loudly(status: int, lines: list[str], seconds: float, *cause: str) -> None:
    assert status != 0
    assert seconds < 20  # not hung (a bound, not a speed figure: the run times out at 30)
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    [line] = not_logs(lines)
    assert line.startswith("quart_app: cannot start: "), line
    for words in cause:
        assert words in line, line


@pytest.fixture
def taken_port(place: Place) -> Iterator[None]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", place.port))
        sock.listen()
        yield


def failures(place: Place) -> dict[str, tuple[dict[str, str], tuple[str, ...]]]:
    """name -> (environment, words the line must hold)."""
    a_file = place.root / "a-file"
    a_file.write_text("not a directory")
    return {
        "a bad value": (
            {"QUART_APP_MAX_UPLOAD_BYTES": "lots"},
            ("QUART_APP_MAX_UPLOAD_BYTES", "'lots'"),
        ),
        "a storage directory that is a file": (
            {"QUART_APP_STORAGE_DIR": str(a_file)},
            ("storage directory", str(a_file), "not a directory"),
        ),
        "a database that cannot be reached": (
            {"QUART_APP_DATABASE_URL": f"sqlite+aiosqlite:///{a_file / 'db.sqlite3'}"},
            ("database", str(a_file), "not a directory"),
        ),
        "no database and no migrating": (
            {"QUART_APP_AUTO_MIGRATE": "0"},
            ("no database at", str(place.database)),
        ),
    }


FAILURES = [
    "a bad value",
    "a storage directory that is a file",
    "a database that cannot be reached",
    "no database and no migrating",
]


@pytest.mark.parametrize("failure", FAILURES)
def test_the_serve_command_fails_loudly(place: Place, failure: str) -> None:
    env, cause = failures(place)[failure]
    assert_fails_loudly(*run(place, serve_command(place), **env), *cause)


@pytest.mark.parametrize("failure", FAILURES)
def test_the_plain_hypercorn_command_fails_loudly_too(place: Place, failure: str) -> None:
    env, cause = failures(place)[failure]
    assert_fails_loudly(*run(place, hypercorn_command(place), **env), *cause)


@pytest.mark.usefixtures("taken_port")
def test_a_taken_port(place: Place) -> None:
    assert_fails_loudly(
        *run(place, serve_command(place)), f"127.0.0.1:{place.port}", "Address already in use"
    )
    # Hypercorn binds before it loads the app: a traceback, but not a clean exit.
    status, _, _ = run(place, hypercorn_command(place))
    assert status != 0


def test_postgresql_on_a_closed_port(place: Place) -> None:
    pytest.importorskip("asyncpg", reason="the PostgreSQL driver is not installed")
    url = f"postgresql+asyncpg://app:secret@127.0.0.1:{free_port()}/app"
    status, lines, seconds = run(place, serve_command(place), QUART_APP_DATABASE_URL=url)
    assert_fails_loudly(status, lines, seconds, "database", "app:***@127.0.0.1")
    assert "secret" not in "\n".join(lines)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_worker_that_cannot_start_fails_the_serve_command(place: Place, workers: str) -> None:
    """Past the checks before the start, a worker's own startup fails (here
    crash recovery, which needs the write lock another process holds). With
    2 workers, Hypercorn 0.18 alone would exit 0 (pgjones/hypercorn#269)."""
    assert run(place, [sys.executable, "-m", "quart_app", "migrate"])[0] == 0
    holder = sqlite3.connect(place.database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        status, lines, seconds = run(place, serve_command(place, "--workers", workers))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert status != 0
    assert seconds < 20  # not hung (a bound, not a speed figure: the run times out at 30)
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    causes = not_logs(lines)
    assert len(causes) == max(int(workers), 1)  # one line from each worker
    for line in causes:
        assert line.startswith("quart_app: cannot start: crash recovery on sqlite"), line
        assert line.endswith("database is locked"), line


def test_a_good_start_says_what_it_serves_and_stops_cleanly(place: Place) -> None:
    with (place.root / "server.log").open("w+") as log:
        process = subprocess.Popen(
            serve_command(place), cwd=place.root, env=place.env, stderr=log, stdout=log
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                assert process.poll() is None, log.read()
                try:
                    if httpx.get(f"http://127.0.0.1:{place.port}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            process.send_signal(signal.SIGTERM)
            status = process.wait(timeout=20)
        log.seek(0)
        lines = log.read().splitlines()
    assert status == 0
    [started] = [line for line in lines if '"quart_app.serve"' in line]
    for words in (
        f"database sqlite+aiosqlite:///{place.database}",
        f"storage {place.root / 'uploads'}",
        f"schema revision {HEAD_REVISION}",
        f"bind 127.0.0.1:{place.port}",
    ):
        assert words in started, started
    assert not any("Traceback" in line for line in lines)


def test_check_from_another_directory_does_not_check_a_new_empty_database(
    tmp_path: Path, place: Place
) -> None:
    """Run where there is no database: the default paths resolve against the
    current directory, and the command says there is nothing there instead
    of creating an empty database and calling it well."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in place.env.items() if not k.startswith("QUART_APP_")}
    result = subprocess.run(
        [sys.executable, "-m", "quart_app", "check"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "all is well" not in result.stdout
    assert f"no database at {elsewhere / 'instance' / 'quart_app.sqlite3'}" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(elsewhere.iterdir()) == []  # nothing created there
