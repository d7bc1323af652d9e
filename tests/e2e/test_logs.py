"""The logs of a real server: every line on stderr is JSON, Hypercorn's own
included (hypercorn.toml's logconfig_dict); each worker logs one line when
it starts and one when it has stopped, saying how long the shutdown took and
what it drained; a client that hangs up is labelled so in its access line.
The access line's fields themselves: tests/app/test_request_log.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools import PROJECT_ROOT
from devtools.auth import TEST_ADMIN_KEY, bearer
from devtools.ports import free_port
from devtools.processes import die_with_parent, stop_process
from devtools.server import RunningServer, start_server


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line, parsed: a line that is not JSON fails the test."""
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    return lines


def of(lines: list[dict[str, Any]], logger: str, message: str | None = None) -> list[Any]:
    return [x for x in lines if x["logger"] == logger and message in (None, x["message"])]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path / "server")
    try:
        yield running
    finally:
        running.stop()


def open_upload(server: RunningServer, name: str, length: int, first: bytes) -> socket.socket:
    """A PUT whose body has begun to arrive, on a raw connection."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = (
        f"PUT /files/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
        f"Authorization: Bearer {TEST_ADMIN_KEY}\r\nX-Request-ID: {name}\r\n\r\n"
    )
    sock.sendall(head.encode() + first)
    return sock


# More than a write batch (QUART_APP_WRITE_BATCH_BYTES, 1 MiB): the temp file
# exists once the first batch is written.
FIRST = b"x" * (1024 * 1024 + 65536)


def wait_for_temp_file(server: RunningServer) -> None:
    deadline = time.monotonic() + 10
    while not any((server.storage_dir / "tmp").iterdir()):  # the handler is writing
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_every_line_is_json_and_a_worker_says_when_it_starts_and_stops(
    server: RunningServer,
) -> None:
    httpx.get(f"{server.url}/users?limit=1&token=hunter2", headers=bearer())
    server.stop()
    lines = json_lines(server.log())
    [running] = of(lines, "hypercorn.error")
    assert running["message"] == f"Running on http://127.0.0.1:{server.port} (CTRL + C to quit)"
    assert running["level"] == "INFO" and running["time"].endswith("Z")
    [started] = of(lines, "quart_app.lifecycle", "worker started")
    assert started["bind"] == [f"127.0.0.1:{server.port}"]
    assert started["workers"] == 0
    assert (started["database"], started["storage"]) == ("sqlite", "local")
    assert started["version"] and started["schema_revision"]
    [stopped] = of(lines, "quart_app.lifecycle", "worker stopped")
    assert stopped["pid"] == started["pid"]
    assert stopped["requests_in_flight_at_signal"] == 0
    assert stopped["requests_served"] == 2  # /healthz (the start-up probe) and /users
    assert stopped["shutdown_seconds"] < 5
    [users] = [x for x in server.access_lines() if x["path"] == "/users"]
    assert users["query"] == "limit=1&token=REDACTED"
    assert "hunter2" not in server.log()
    # Order: the worker's start line, Hypercorn's, the requests, the stop line.
    order = [lines.index(x) for x in (started, running, users, stopped)]
    assert order == sorted(order)


def test_a_client_that_hangs_up_is_labelled(server: RunningServer) -> None:
    sock = open_upload(server, "hung-up", 4 * 1024 * 1024, FIRST)
    wait_for_temp_file(server)
    sock.close()
    [line] = server.wait_for_access(lambda x: x["request_id"] == "hung-up")
    assert (line["status"], line["outcome"], line["problem"]) == (None, "client hung up", None)
    assert line["bytes_in"] >= len(FIRST)
    assert httpx.get(f"{server.url}/files/hung-up", headers=bearer()).status_code == 404


def test_the_stop_line_counts_the_requests_drained(server: RunningServer) -> None:
    """An upload in flight when SIGTERM comes finishes (graceful_timeout);
    the stop line says one request was in flight and was drained, and how
    long the shutdown took."""
    assert server.process is not None
    sock = open_upload(server, "drained", len(FIRST) + 100_000, FIRST)
    wait_for_temp_file(server)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    sock.sendall(b"y" * 100_000)
    sock.settimeout(10)
    answer = sock.recv(65536)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
    assert server.process.wait(timeout=20) == 0
    lines = json_lines(server.log())
    [line] = [x for x in server.access_lines() if x["request_id"] == "drained"]
    assert (line["status"], line["outcome"]) == (201, "answered")
    [stopped] = of(lines, "quart_app.lifecycle", "worker stopped")
    assert stopped["requests_in_flight_at_signal"] == 1
    assert stopped["requests_drained"] == 1
    assert 0.5 <= stopped["shutdown_seconds"] < 10


def test_the_serve_command_with_two_workers(tmp_path: Path) -> None:
    """`python -m quart_app serve`: one line for the server before its
    workers start, then a start and a stop line from each worker; all JSON."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUART_APP_")}
    env.update(
        {
            "PYTHONPATH": str(PROJECT_ROOT),
            "QUART_APP_STORAGE_DIR": str(tmp_path / "uploads"),
            "QUART_APP_INSTANCE_DIR": str(tmp_path / "instance"),
            "QUART_APP_IMPORT_WORKERS": "0",
        }
    )
    command = [sys.executable, "-m", "quart_app", "serve", "--config"]
    command += [str(PROJECT_ROOT / "hypercorn.toml"), "--bind", f"127.0.0.1:{port}"]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--workers", "2"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:
        deadline = time.monotonic() + 30
        while len(of(json_lines(log_path.read_text()), "hypercorn.error")) < 2:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        stop_process(process, timeout=20)
    assert process.returncode == 0, log_path.read_text()
    lines = json_lines(log_path.read_text())
    [starting] = of(lines, "quart_app.serve")
    assert starting["bind"] == [f"127.0.0.1:{port}"] and starting["workers"] == 2
    assert (starting["database_kind"], starting["storage_kind"]) == ("sqlite", "local")
    assert starting["version"] == of(lines, "quart_app.lifecycle")[0]["version"]
    started = of(lines, "quart_app.lifecycle", "worker started")
    stopped = of(lines, "quart_app.lifecycle", "worker stopped")
    assert len(started) == len(stopped) == 2
    assert {x["pid"] for x in started} == {x["pid"] for x in stopped}
    assert all(x["bind"] == [f"127.0.0.1:{port}"] and x["workers"] == 2 for x in started)
    assert all(x["requests_in_flight_at_signal"] == 0 for x in stopped)
