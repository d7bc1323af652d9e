"""The do-nothing server with the socket reads quart_app uses: Hypercorn's
64 KiB read constant raised to 256 KiB, as quart_app/edge/server_internals.py
(SOCKET_READ_BYTES) does. Without it the do-nothing ceiling would be held to
smaller reads than ours; the benchmark reports our ratio to both."""

from __future__ import annotations

import hypercorn.asyncio.tcp_server as tcp_server

from .nothing import app

tcp_server.MAX_RECV = 256 * 1024  # quart_app.streaming.SOCKET_READ_BYTES

__all__ = ["app"]
