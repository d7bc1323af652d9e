"""One log line when a worker starts serving, one when it has stopped.

Hypercorn runs the app's startup (``before_serving``) before it listens and
its shutdown (``after_serving``) once the requests in flight have ended or
the graceful timeout cut them, so the two lines bracket everything the worker
served. The bind and the number of workers are Hypercorn's: its worker_serve,
wrapped by edge/server_internals.watch_worker, hands them here, and notes the
moment a shutdown signal arrived. Under Quart's test app (no Hypercorn) they
are null and the shutdown counts from ``after_serving``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from sqlalchemy import make_url

from quart_app.config import Settings
from quart_app.edge.access_log import RequestLogMiddleware

log = logging.getLogger("quart_app.lifecycle")


@dataclass
class WorkerRun:
    """What this process knows of its own run (one per process)."""

    bind: list[str] | None = None
    insecure_bind: list[str] | None = None
    workers: int | None = None
    started_at: float = field(default_factory=time.monotonic)
    signalled_at: float | None = None
    in_flight_at_signal: int = 0
    finished_at_signal: int = 0


WORKER = WorkerRun()


def serving_with(bind: list[str], insecure_bind: list[str], workers: int) -> None:
    """Hypercorn's worker is about to start the app with this config (bind
    is TLS when a certificate is configured; insecure_bind is plain)."""
    WORKER.bind, WORKER.insecure_bind, WORKER.workers = bind, insecure_bind, workers


def shutdown_signalled() -> None:
    """Hypercorn's worker was told to stop: it stops listening and drains."""
    WORKER.signalled_at = time.monotonic()
    WORKER.in_flight_at_signal = RequestLogMiddleware.requests_in_flight
    WORKER.finished_at_signal = RequestLogMiddleware.requests_finished


def package_version() -> str:
    try:
        return version("quart_app")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def database_kind(settings: Settings) -> str:
    return make_url(settings.database_url).get_backend_name()


def storage_kind(settings: Settings) -> str:
    return "s3" if settings.STORAGE_URL else "local"


def log_started(settings: Settings, schema_revision: str | None) -> None:
    WORKER.started_at = time.monotonic()
    WORKER.signalled_at = None
    log.info(
        "worker started",
        extra={
            "version": package_version(),
            "pid": os.getpid(),
            "bind": WORKER.bind,
            "insecure_bind": WORKER.insecure_bind,
            "workers": WORKER.workers,
            "database": database_kind(settings),
            "storage": storage_kind(settings),
            "schema_revision": schema_revision,
        },
    )


def log_stopped(shutdown_began: float) -> None:
    """``shutdown_began``: when after_serving started, the moment used when
    no signal was noted."""
    now = time.monotonic()
    began = WORKER.signalled_at if WORKER.signalled_at is not None else shutdown_began
    signalled = WORKER.signalled_at is not None
    served = RequestLogMiddleware.requests_finished
    log.info(
        "worker stopped",
        extra={
            "version": package_version(),
            "pid": os.getpid(),
            "shutdown_seconds": round(now - began, 3),
            "uptime_seconds": round(now - WORKER.started_at, 3),
            # Requests running when the signal came, and requests that ended
            # after it (those, plus any a keep-alive connection sent meanwhile).
            "requests_in_flight_at_signal": WORKER.in_flight_at_signal if signalled else None,
            "requests_drained": served - WORKER.finished_at_signal if signalled else None,
            "requests_served": served,
        },
    )
