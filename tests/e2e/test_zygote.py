"""The servers the tests fork from the zygote (devtools/zygote.py) are the
processes a fresh ``python -m hypercorn`` would be: the same environment,
working directory, descriptors and exit statuses, and a fresh start where an
import-time setting differs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from devtools.auth import bearer
from devtools.processes import status_field
from devtools.server import prepare_server
from devtools.zygote import ForkedProcess, Zygote, ZygoteGone, base_environment, zygote_for

pytestmark = pytest.mark.skipif(
    os.environ.get("QUART_APP_TEST_ZYGOTE") == "0", reason="QUART_APP_TEST_ZYGOTE=0: no zygote"
)


def fd_targets(pid: int) -> set[str]:
    targets = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            targets.add(os.readlink(f"/proc/{pid}/fd/{name}"))
    return targets


def test_a_forked_server_has_the_environment_and_directory_it_was_given(tmp_path: Path) -> None:
    server = prepare_server(tmp_path / "forked")
    server.start()
    try:
        assert isinstance(server.process, ForkedProcess)
        pid = server.process.pid
        assert parent_pid(pid) != os.getpid()
        # /proc/PID/environ shows the zygote's: what the server was given is
        # what it uses (its database, storage and admin key).
        assert server.database_path.exists()
        assert server.storage_dir.is_dir()
        assert os.readlink(f"/proc/{pid}/cwd") == str(server.root)
        assert httpx.get(f"{server.url}/users", headers=bearer()).status_code == 200
        # Nothing of the zygote's: its pipes (to the test process, its
        # signal wake-up) are the only pipes it has, and the server has none.
        assert any(t.startswith("pipe:") for t in fd_targets(parent_pid(pid)))
        assert not [t for t in fd_targets(pid) if t.startswith("pipe:")]
        # Its log is the server's log.
        assert "Running on" in server.log()
    finally:
        server.stop()


def parent_pid(pid: int) -> int:
    parent = status_field(pid, "PPid")
    assert parent is not None, f"process {pid} is gone"
    return int(parent)


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 0), (signal.SIGKILL, -9)])
def test_exit_statuses_are_those_of_a_fresh_process(tmp_path: Path, sig: int, status: int) -> None:
    server = prepare_server(tmp_path / "forked")
    server.start()
    assert isinstance(server.process, ForkedProcess)
    assert server.process.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        server.process.wait(0.05)
    server.process.send_signal(sig)
    # Until its status is read it stays a zombie, as a Popen child does, so
    # its pid cannot be another process's when the test signals it.
    pid, deadline = server.process.pid, time.monotonic() + 20
    while status_field(pid, "State") != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the zygote has heard of its end by now, and must not reap it
    assert status_field(pid, "State") == "Z"
    deadline = time.monotonic() + 20
    while server.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # poll() alone must see it end (wait_until_serving relies on it)
    assert server.process.poll() == status
    assert server.process.wait(0) == status
    deadline = time.monotonic() + 20
    while status_field(pid, "State") is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status_field(pid, "State") is None  # reaped once read
    assert server.process.returncode == status
    server.process.send_signal(signal.SIGTERM)  # ended: nothing to signal, no error


def test_an_app_that_cannot_start_fails_as_it_would_fresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    statuses = []
    for fork in ("1", "0"):
        monkeypatch.setenv("QUART_APP_TEST_ZYGOTE", fork)
        server = prepare_server(tmp_path / f"fork-{fork}", {"QUART_APP_MAX_UPLOAD_BYTES": "lots"})
        server.spawn()
        assert server.process is not None
        assert isinstance(server.process, ForkedProcess) == (fork == "1")
        statuses.append(server.process.wait(30))
        assert "QUART_APP_MAX_UPLOAD_BYTES" in server.log()
    assert statuses[0] == statuses[1] != 0


@pytest.mark.parametrize("variable", ["PYTHONWARNINGS", "PYTHONPATH", "PROMETHEUS_MULTIPROC_DIR"])
def test_an_import_time_setting_of_its_own_starts_a_server_fresh(
    tmp_path: Path, variable: str
) -> None:
    value = "error" if variable == "PYTHONWARNINGS" else str(tmp_path / "x")
    if variable == "PYTHONPATH":
        value = f"{os.environ.get('PYTHONPATH', '')}:{tmp_path}"
    server = prepare_server(tmp_path / "fresh", {variable: value})
    assert zygote_for(server.env) is None
    assert zygote_for(prepare_server(tmp_path / "forked").env) is not None


def test_when_the_zygote_ends_its_servers_end_and_it_says_so(tmp_path: Path) -> None:
    """A zygote of this test's own, so the run's keeps serving the others."""
    zygote = Zygote(base_environment())
    server = prepare_server(tmp_path / "forked")
    command = server.command()
    try:
        server.process = zygote.spawn(
            command[2], command[3:], server.env, server.root, server.log_path
        )
        server.wait_until_serving()
        os.kill(zygote._process.pid, signal.SIGKILL)
        # Sent SIGTERM by its parent's end; its own status went with it.
        assert server.process.wait(30) == -signal.SIGTERM
        with pytest.raises(ZygoteGone):
            zygote.spawn(command[2], command[3:], server.env, server.root, server.log_path)
        assert zygote.gone
    finally:
        server.stop()
        zygote.close()
