"""``python -m quart_app smoke URL --key KEY`` against a real server started
from this checkout (what CI does on a fresh clone): it passes, and when a
step fails for real (a key without the scopes it needs, the server stopped
midway, nothing listening) it exits non-zero naming that step."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from devtools import PROJECT_ROOT
from devtools.auth import TEST_ADMIN_KEY, bearer, create_user_key
from devtools.ports import free_port
from devtools.server import RunningServer
from quart_app.ops.smoke import STEPS, smoke


def run_smoke(url: str, key: str) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUART_APP_")}
    result = subprocess.run(
        [sys.executable, "-m", "quart_app", "smoke", url, "--key", key],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stderr == ""
    return result.returncode, result.stdout.splitlines()


def test_smoke_passes_and_leaves_no_file(server: RunningServer) -> None:
    status, lines = run_smoke(server.url, TEST_ADMIN_KEY)
    assert status == 0, lines
    assert [line.split(":")[0] for line in lines[:-1]] == [f"ok   {name}" for name, _ in STEPS]
    assert lines[-1] == "smoke passed"
    # What it made is gone: no file, no blob on disk, the smoke user's key revoked.
    listed = httpx.get(f"{server.url}/files", headers=bearer()).json()
    assert listed["items"] == []
    assert [p for p in (server.storage_dir / "blobs").rglob("*") if p.is_file()] == []
    [user] = httpx.get(f"{server.url}/users", headers=bearer()).json()["items"]
    keys = httpx.get(f"{server.url}/users/{user['id']}/keys", headers=bearer()).json()["items"]
    assert [key["revoked_at"] is not None for key in keys] == [True]


def test_a_key_without_the_admin_scope_fails_at_create_user(server: RunningServer) -> None:
    _, read_only = create_user_key(server.url, ("read",))
    status, lines = run_smoke(server.url, read_only)
    assert status == 1
    assert lines[0].startswith("ok   reach:")
    assert lines[1].startswith("FAIL create user: expected 201, got 403")
    assert lines[-1] == "smoke failed at step: create user"


def test_the_server_stopped_midway_fails_at_the_next_step(server: RunningServer) -> None:
    lines: list[str] = []

    def emit(line: str) -> None:
        lines.append(line)
        if line.startswith("ok   multipart upload:"):
            server.stop()

    assert smoke(server.url, TEST_ADMIN_KEY, emit) == 1
    assert lines[3].startswith("FAIL idempotency replay: POST http://127.0.0.1:")
    assert "Connection refused" in lines[3]
    # What it made could not be removed: it says what is left.
    assert lines[-2].startswith("left behind: http://127.0.0.1:")
    assert lines[-1] == "smoke failed at step: idempotency replay"


def test_nothing_listening_fails_at_reach() -> None:
    status, lines = run_smoke(f"http://127.0.0.1:{free_port()}", TEST_ADMIN_KEY)
    assert status == 1
    assert lines[0].startswith("FAIL reach: GET http://127.0.0.1:")
    assert lines[-1] == "smoke failed at step: reach"


def test_the_smoke_client_needs_no_test_tools() -> None:
    """The runtime install has no httpx or tus client: smoke uses the
    standard library alone."""
    code = (
        "import sys, quart_app.ops.smoke; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'httpx', 'requests', 'tusclient', 'pytest', 'aiohttp', 'urllib3'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "[]"
