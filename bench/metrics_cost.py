"""What the request metrics cost a request (README "Metrics"), timed in
process, in both of prometheus_client's modes:

- ``single``: values in this process's memory (a plain ``hypercorn`` command,
  the tests);
- ``multiprocess``: values in memory-mapped files that a scrape adds up over
  the workers (``python -m quart_app serve``).

Per request the metrics do two things: the hook that notes the route
template (edge/metrics.py, a before_request hook), and the counts once the
request is done (a request counter, a duration histogram, bytes in and out).
Both are timed over a request a client with a good key makes (GET
/files/<file_id>) and an upload (PUT /files/<file_id>, also counted in
flight). A scrape's own time is given too (it runs off the event loop).

    python -m bench.metrics_cost          prints both modes' figures as JSON

The mode is fixed when prometheus_client is first imported, so each runs in
a child process of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

from devtools.app_settings import temp_app_settings
from devtools.auth import bearer

BATCHES, BATCH_CALLS = 200, 200
REQUESTS = {"read": ("GET", "/files/report.pdf"), "upload": ("PUT", "/files/report.pdf")}


def _batches_us(call: Callable[[], object]) -> list[float]:
    """Microseconds a call, for each batch of calls."""
    timings = []
    for _ in range(BATCHES):
        started = time.perf_counter()
        for _ in range(BATCH_CALLS):
            call()
        timings.append((time.perf_counter() - started) / BATCH_CALLS * 1e6)
    return timings


def _finish(notes: dict[str, Any], method: str) -> None:
    from quart_app.edge.metrics import request_finished

    request_finished(dict(notes), method, 201, 0.004, 4096, 180)


async def _measure(root: Path) -> dict[str, Any]:
    from quart import request

    from quart_app import create_app, metrics
    from quart_app.edge.access_log import NOTES_KEY

    logging.getLogger("quart_app.access").setLevel(logging.WARNING)
    app = create_app({**temp_app_settings(root), "KEY_CACHE_SECONDS": 3600})
    figures: dict[str, Any] = {"multiprocess": metrics.multiprocess()}
    async with app.test_app():
        [hook] = [h for h in app.before_request_funcs[None] if h.__name__ == "_note_route"]
        note_route = cast(Callable[[], Awaitable[None]], hook)
        for label, (method, path) in REQUESTS.items():
            async with app.test_request_context(path, method=method, headers=bearer()):
                notes: dict[str, Any] = {}
                cast(dict[str, Any], request.scope)[NOTES_KEY] = notes
                hook_times = []
                for _ in range(BATCHES):
                    started = time.perf_counter()
                    for _ in range(BATCH_CALLS):
                        await note_route()
                    hook_times.append((time.perf_counter() - started) / BATCH_CALLS * 1e6)
                # As many ends as the hook had starts: an upload's in-flight
                # gauge goes back to where it was.
                finished_times = _batches_us(partial(_finish, notes, method))
            # The median batch is the figure; the fastest, what the code costs
            # with no other process in the way (the machine is shared).
            hook_us = statistics.median(hook_times)
            finished_us = statistics.median(finished_times)
            figures[label] = {
                "route": notes.get("route"),
                "hook_us": round(hook_us, 2),
                "finished_us": round(finished_us, 2),
                "per_request_us": round(hook_us + finished_us, 2),
                "per_request_fastest_us": round(min(hook_times) + min(finished_times), 2),
            }
        started = time.perf_counter()
        for _ in range(20):
            await asyncio.to_thread(metrics.exposition, None)
        figures["scrape_ms"] = round((time.perf_counter() - started) / 20 * 1000, 2)
    return figures


def _child() -> None:
    with tempfile.TemporaryDirectory() as root:
        print(json.dumps(asyncio.run(_measure(Path(root)))))


def measure_metrics() -> dict[str, Any]:
    """Both modes, each in a child process: {mode: figures}."""
    figures = {}
    with tempfile.TemporaryDirectory() as directory:
        for mode, extra in (
            ("single", {}),
            ("multiprocess", {"PROMETHEUS_MULTIPROC_DIR": directory}),
        ):
            env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            result = subprocess.run(
                [sys.executable, "-m", "bench.metrics_cost", "--child"],
                env={**env, **extra},
                capture_output=True,
                text=True,
                check=True,
            )
            figures[mode] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        _child()
    else:
        print(json.dumps(measure_metrics(), indent=2))
