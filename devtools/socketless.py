"""Hypercorn's HTTP/1.1 protocol over no socket: what a connection's task
would hand it is handed to it directly (tests and bench.read_path)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import Event
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.typing import AppWrapper, ConnectionState


def http1_protocol(
    protocol_class: type[H11Protocol],
    app: Any,
    task_group: TaskGroup,
    send: Callable[[Event], Awaitable[None]],
) -> H11Protocol:
    """An HTTP/1.1 connection from 127.0.0.1:50000 to 127.0.0.1:80, without
    TLS, under Hypercorn's default Config; what it sends goes to ``send``."""
    return protocol_class(
        cast(AppWrapper, app),
        Config(),
        WorkerContext(None),
        task_group,
        ConnectionState({}),
        False,
        ("127.0.0.1", 50000),
        ("127.0.0.1", 80),
        send,
    )
