"""API keys across processes: a key revoked through one worker stops
working on every worker within QUART_APP_KEY_CACHE_SECONDS."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from devtools.auth import bearer
from devtools.server import start_server

CACHE_SECONDS = 1.0
REQUESTS = 40  # each on a new connection: the kernel spreads them over both workers


def statuses(url: str, key: str) -> set[int]:
    """One request per new connection, so that both workers answer some."""
    return {
        httpx.get(url, headers={**bearer(key), "Connection": "close"}, timeout=10).status_code
        for _ in range(REQUESTS)
    }


def test_a_revoked_key_stops_working_on_every_worker(tmp_path: Path) -> None:
    server = start_server(
        tmp_path / "server",
        # (the failure limit would turn the later 401s into 429s)
        {
            "QUART_APP_KEY_CACHE_SECONDS": str(CACHE_SECONDS),
            "QUART_APP_AUTH_FAILURES_PER_MINUTE": "0",
        },
        args=["--workers", "2"],
    )
    try:
        with httpx.Client(base_url=server.url, headers=bearer(), timeout=10) as admin:
            user = admin.post("/users", json={"name": "Ada", "email": "ada@example.com"})
            assert user.status_code == 201
            made = admin.post(f"/users/{user.json()['id']}/keys", json={})
            assert made.status_code == 201
        secret, key_url = made.json()["secret"], made.headers["Location"]
        me = f"{server.url}/users/{user.json()['id']}"
        assert statuses(me, secret) == {200}  # every worker now trusts it for a while
        assert httpx.delete(key_url, headers=bearer(secret), timeout=10).status_code == 204
        time.sleep(CACHE_SECONDS + 0.5)
        assert statuses(me, secret) == {401}
    finally:
        server.stop()
