"""Bounds on connections that need no server internals: the limits from the
settings, the raw 503 for a connection past the cap, and giving freed heap
memory back. server_internals.GuardedTCPServer applies them."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import time
from dataclasses import dataclass
from typing import Any

from quart_app.config import Settings
from quart_app.edge.problem_details import raw_problem, status_phrase
from quart_app.errors import TooManyConnections


def _libc_malloc_trim() -> Any:
    """glibc's malloc_trim, or None (another libc)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


class MemoryReturner:
    """Hands freed heap memory back to the system after connections close.

    A response chunk (1 MiB) or a body buffer is too small for glibc to map
    it on its own, so it comes from the heap; freed, it stays in the process,
    and a burst of stalled downloads left a worker large long after they
    were gone (README, "Why the code is shaped this way"). malloc_trim(0)
    returns the free pages; it runs at most once per TRIM_INTERVAL_SECONDS,
    when a connection closes.
    """

    TRIM_INTERVAL_SECONDS = 1.0

    def __init__(self) -> None:
        self._trim = _libc_malloc_trim()
        self._last = 0.0

    def connection_closed(self) -> None:
        now = time.monotonic()
        if self._trim is not None and now - self._last >= self.TRIM_INTERVAL_SECONDS:
            self._last = now
            # In a worker thread: on a large heap it can take long enough to
            # stall every connection of the event loop.
            with contextlib.suppress(RuntimeError):  # no running loop
                asyncio.get_running_loop().run_in_executor(None, self._trim, 0)


@dataclass(frozen=True)
class ConnectionLimits:
    idle_timeout: float
    min_rate: int
    rate_window: float
    linger_seconds: float
    linger_bytes: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            idle_timeout=settings.IDLE_TIMEOUT,
            min_rate=settings.MIN_TRANSFER_RATE,
            rate_window=settings.TRANSFER_RATE_WINDOW,
            linger_seconds=settings.LINGER_SECONDS,
            linger_bytes=settings.LINGER_BYTES,
            max_connections=settings.MAX_CONNECTIONS,
        )


def refusal() -> bytes:
    """The 503 for a connection past the cap, written before the app sees a
    request (so built here, as raw HTTP/1.1, from the table's problem)."""
    error = TooManyConnections("The server has as many connections as it takes; retry shortly.")
    status, fields, body = raw_problem(error)
    lines = [f"HTTP/1.1 {status} {status_phrase(status)}"]
    lines += [f"{name.decode('latin-1')}: {value.decode('latin-1')}" for name, value in fields]
    lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
