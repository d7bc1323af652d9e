"""The service's Prometheus metrics: every family, its labels, and the plain
calls that move them (README "Metrics"). The one table, as errors.py is for
problems: the edge, the services and the database layer call into it; no
HTTP here (edge/metrics.py measures requests, api/metrics.py serves the text).

Multi-process mode: with ``PROMETHEUS_MULTIPROC_DIR`` set before
prometheus_client is first imported (``python -m quart_app serve`` sets it
for its Hypercorn workers, ops/serve.py), each process writes its values to
files there and a scrape answered by any worker adds up every worker's.
Without it (tests, a plain ``hypercorn`` command) the values are this
process's own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import values as prometheus_values
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# The text format Prometheus has read longest (prometheus_client's own
# CONTENT_TYPE_LATEST moved to 1.0.0 in 0.22; what generate_latest writes
# by default is this).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Route label of a request no route took: a 404 or 405, or one refused
# before routing (a Host not allowed, a head too large, too many connections).
UNMATCHED = "unmatched"
# Method label for any method no route has (a client may send any token:
# labels must stay few).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
# Seconds: from a cached GET (milliseconds) to a large upload (minutes).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
# Requests: a group commit writes at most its max_batch (128; users 256).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DATABASE_ERROR_KINDS = ("unavailable", "full")

# No *_created series: multi-process mode has none, so one process alone
# shows the same families as several workers.
disable_created_metrics()  # type: ignore[no-untyped-call]
# Our families only, in a registry of our own: the default one would add
# the process and garbage-collector families of whichever worker answered.
REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "quart_app_http_requests",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "quart_app_http_request_duration_seconds",
    "Seconds from a request's arrival to its last response byte sent.",
    ["route", "method"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
BYTES_RECEIVED = Counter(
    "quart_app_http_received_bytes",
    "Request body bytes received, by route template and method.",
    ["route", "method"],
    registry=REGISTRY,
)
BYTES_SENT = Counter(
    "quart_app_http_sent_bytes",
    "Response body bytes sent, by route template and method.",
    ["route", "method"],
    registry=REGISTRY,
)
UPLOADS_IN_FLIGHT = Gauge(
    "quart_app_uploads_in_flight",
    "Upload requests (POST /files, PUT /files/<id>, tus POST and PATCH, POST /imports) "
    "being served now, over the live workers.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
WORKERS = Gauge(
    "quart_app_workers",
    "Worker processes serving now (each counts itself while it serves).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
RESUMABLE_CREATED = Counter(
    "quart_app_resumable_uploads_created",
    "Resumable (tus) uploads created.",
    registry=REGISTRY,
)
RESUMABLE_FINISHED = Counter(
    "quart_app_resumable_uploads_finished",
    "Resumable uploads whose last byte arrived: their file now exists.",
    registry=REGISTRY,
)
RESUMABLE_EXPIRED = Counter(
    "quart_app_resumable_uploads_expired",
    "Unfinished resumable uploads removed by the sweep after they expired.",
    registry=REGISTRY,
)
BATCH_SIZES = Histogram(
    "quart_app_group_commit_batch_size",
    "Requests written by one group commit (one transaction, one fsync), by batcher.",
    ["batcher"],
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
DATABASE_ERRORS = Counter(
    "quart_app_database_errors",
    "Database failures (not a request's fault): unavailable (unreachable, locked or "
    "busy past QUART_APP_DATABASE_TIMEOUT, its file gone) or full.",
    ["kind"],
    registry=REGISTRY,
)
for _kind in DATABASE_ERROR_KINDS:
    DATABASE_ERRORS.labels(_kind)  # present at 0, so that rate() sees the first one


def multiprocess() -> bool:
    """Whether this process writes its values where every worker's are
    added up (decided when prometheus_client was first imported)."""
    return bool(getattr(prometheus_values.ValueClass, "_multiprocess", False))


# -- requests (edge/metrics.py) ---------------------------------------------


class _RequestChildren:
    """The labelled children one (route, method, status) moves, looked up
    once: ``labels()`` checks and locks on every call."""

    __slots__ = ("received", "requests", "seconds", "sent")

    def __init__(self, route: str, method: str, status: str) -> None:
        self.requests = REQUESTS.labels(route, method, status)
        self.seconds = REQUEST_SECONDS.labels(route, method)
        self.received = BYTES_RECEIVED.labels(route, method)
        self.sent = BYTES_SENT.labels(route, method)


# Bounded: routes x KNOWN_METHODS (+ other) x statuses 0..599.
_children: dict[tuple[str, str, int], _RequestChildren] = {}


def request_finished(
    route: str | None, method: str, status: int, seconds: float, received: int, sent: int
) -> None:
    """One request answered (``status`` 0: the client left before an answer)."""
    key = (route or UNMATCHED, method if method in KNOWN_METHODS else OTHER_METHOD, status)
    children = _children.get(key)
    if children is None:
        children = _children[key] = _RequestChildren(key[0], key[1], str(status))
    children.requests.inc()
    children.seconds.observe(seconds)
    if received:
        children.received.inc(received)
    if sent:
        children.sent.inc(sent)


def upload_started() -> None:
    UPLOADS_IN_FLIGHT.inc()


def upload_ended() -> None:
    UPLOADS_IN_FLIGHT.dec()


# -- the domain and the database ----------------------------------------------


def resumable_upload_created() -> None:
    RESUMABLE_CREATED.inc()


def resumable_upload_finished() -> None:
    RESUMABLE_FINISHED.inc()


def resumable_uploads_expired(count: int) -> None:
    if count:
        RESUMABLE_EXPIRED.inc(count)


def group_commit_batch(batcher: str, size: int) -> None:
    BATCH_SIZES.labels(batcher).observe(size)


def database_error(kind: str) -> None:
    """``kind``: one of DATABASE_ERROR_KINDS."""
    DATABASE_ERRORS.labels(kind).inc()


# -- the worker's life (state.py) ---------------------------------------------


def worker_started() -> None:
    WORKERS.inc()


def worker_stopped() -> None:
    """The worker stops serving: its live gauges (in flight, workers) leave
    the sums; its counters stay, as Prometheus expects of a counter."""
    WORKERS.dec()
    if multiprocess():
        mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


# -- the text a scrape gets (api/metrics.py) ----------------------------------


@dataclass(frozen=True)
class ImportQueue:
    """Import jobs waiting for a worker, read from the database at scrape
    time (shared by every worker and server, so no process counts it)."""

    depth: int
    oldest_age_seconds: float


class _QueueCollector:
    def __init__(self, queue: ImportQueue) -> None:
        self.queue = queue

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "quart_app_import_queue_depth",
            "Import jobs queued and not yet claimed by a worker (from the database).",
            value=self.queue.depth,
        )
        yield GaugeMetricFamily(
            "quart_app_import_queue_age_seconds",
            "Seconds the oldest queued import job has waited (0: none queued).",
            value=self.queue.oldest_age_seconds,
        )


class _ThisProcess:
    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")


def _forget_dead_workers(directory: Path) -> None:
    """A worker that died without stopping (killed) leaves its live gauges
    behind; drop them so that they stop counting in the sums."""
    for path in directory.glob("gauge_live*.db"):
        match = _LIVE_FILE.fullmatch(path.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, someone else's


def exposition(queue: ImportQueue | None) -> bytes:
    """The text format of every family (over every worker in multi-process
    mode); ``queue`` None: the database could not say, the queue families
    are left out. Reads the workers' files: call off the event loop."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess():
        directory = Path(os.environ[MULTIPROC_DIR_VARIABLE])
        _forget_dead_workers(directory)
        MultiProcessCollector(registry, str(directory))  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    if queue is not None:
        registry.register(_QueueCollector(queue))
    return generate_latest(registry)
