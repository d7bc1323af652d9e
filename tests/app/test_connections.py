"""The app serves connections with quart_app/edge/server_internals.py's guarded
server (tests/unit/test_connections.py pins the internals it replaces)."""

from __future__ import annotations

import inspect

from hypercorn.asyncio import run as hypercorn_run
from quart import Quart

from quart_app.edge.server_internals import SOCKET_READ_BYTES, GuardedTCPServer


def test_the_app_serves_connections_with_the_guarded_server(app: Quart) -> None:
    # worker_serve's module-level name, which connections.install replaces.
    assert getattr(hypercorn_run, "TCPServer") is GuardedTCPServer  # noqa: B009
    assert "SOCKET_READ_BYTES" in inspect.getsource(GuardedTCPServer._read_data)
    assert SOCKET_READ_BYTES == 256 * 1024
