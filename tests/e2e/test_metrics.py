"""``/metrics`` over a real server with two Hypercorn workers, started as
`make run` starts it (``python -m quart_app serve``): whichever worker answers
a scrape, the counts are both workers' added up (README "Metrics")."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from devtools import PROJECT_ROOT
from devtools.auth import bearer
from devtools.metrics import FAMILIES
from devtools.server import RunningServer, start_server

REQUESTS = 40  # each on a new connection: the kernel spreads them over both workers
SCRAPES = 6
MISSES = {"name": "quart_app_http_requests_total", "route": "/files/<file_id>", "status": "404"}


def scrape(server: RunningServer) -> dict[str, Any]:
    response = httpx.get(
        f"{server.url}/metrics", headers={**bearer(), "Connection": "close"}, timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def misses(families: dict[str, Any]) -> float:
    """GET /files/<file_id> answered 404: the requests this test sent."""
    return float(
        sum(
            sample.value
            for sample in families["quart_app_http_requests"].samples
            if sample.name == MISSES["name"]
            and sample.labels.get("route") == MISSES["route"]
            and sample.labels.get("status") == MISSES["status"]
        )
    )


def worker_pids(server: RunningServer) -> set[int]:
    """Hypercorn's workers: serve's children that multiprocessing spawned
    to run the app (not its resource tracker)."""
    assert server.process is not None
    pid = server.process.pid
    children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return {p for p in children if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()}


def misses_by_process(directory: Path) -> dict[int, float]:
    """What each worker's own value file holds of those requests."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.removeprefix("counter_"))
        metrics = MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
        counts[pid] = sum(
            sample.value
            for metric in metrics
            for sample in metric.samples
            if sample.name == MISSES["name"]
            and sample.labels.get("route") == MISSES["route"]
            and sample.labels.get("status") == MISSES["status"]
        )
    return counts


def test_two_workers_add_up_in_every_scrape(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", args=["--workers", "2"], serve=True)
    try:
        assert server.process is not None
        directory = tmp_path / "server" / "instance" / "metrics" / str(server.process.pid)
        with httpx.Client(base_url=server.url, headers=bearer(), timeout=10) as admin:
            for n in range(3):  # group commits, a resumable upload
                made = admin.post("/users", json={"name": "U", "email": f"u{n}@example.com"})
                assert made.status_code == 201
            tus = {"Tus-Resumable": "1.0.0"}
            assert admin.post("/uploads", headers={**tus, "Upload-Length": "5"}).status_code == 201
        for n in range(REQUESTS):
            missed = httpx.get(
                f"{server.url}/files/no-{n}",
                headers={**bearer(), "Connection": "close"},
                timeout=10,
            )
            assert missed.status_code == 404
        # Figures are recorded just after a response's last byte: wait for them.
        deadline = time.monotonic() + 10
        while misses(scrape(server)) < REQUESTS and time.monotonic() < deadline:
            time.sleep(0.05)
        # Each scrape is answered by one worker or the other, on a new
        # connection each: every one sees both workers' requests.
        scrapes = [scrape(server) for _ in range(SCRAPES)]
        assert [misses(families) for families in scrapes] == [REQUESTS] * SCRAPES
        families = scrapes[-1]
        assert {name: families[name].type for name in FAMILIES if name in families} == FAMILIES
        [workers] = families["quart_app_workers"].samples
        assert workers.value == 2
        [created] = [
            s
            for s in families["quart_app_resumable_uploads_created"].samples
            if s.name.endswith("_total")
        ]
        assert created.value == 1
        # Both workers answered some of the requests, each counted in its own
        # file, and the files are the two workers' (children of serve).
        by_process = misses_by_process(directory)
        assert set(by_process) == worker_pids(server)
        assert len(by_process) == 2
        assert all(count > 0 for count in by_process.values()), by_process
        assert sum(by_process.values()) == REQUESTS
    finally:
        server.stop()
    assert not directory.exists()  # the server's own directory goes with it


def run_python(code: str, directory: Path) -> str:
    """``code`` in a process of its own in multi-process mode over ``directory``."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(directory),
            "PYTHONPATH": str(PROJECT_ROOT),
        },
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


def test_a_worker_killed_mid_upload_stops_counting_in_flight(tmp_path: Path) -> None:
    """A worker that never stopped cleanly (SIGKILL) leaves its live gauges'
    file; the next scrape drops it, while its counters stay in the sums."""
    run_python(
        "import os\n"
        "from quart_app import metrics\n"
        "metrics.upload_started()\n"
        "metrics.request_finished('/files', 'POST', 201, 0.01, 10, 20)\n"
        "os._exit(0)  # as a killed worker: no shutdown\n",
        tmp_path,
    )
    assert list(tmp_path.glob("gauge_livesum_*.db"))
    text = run_python(
        "from quart_app import metrics\n"
        "metrics.upload_started()  # this process's own upload, still in flight\n"
        "print(metrics.exposition(None).decode())\n",
        tmp_path,
    )
    families = {family.name: family for family in text_string_to_metric_families(text)}
    [in_flight] = families["quart_app_uploads_in_flight"].samples
    assert in_flight.value == 1  # the live process's, not the dead one's
    requests = [s for s in families["quart_app_http_requests"].samples if s.name.endswith("_total")]
    assert [(s.labels["route"], s.value) for s in requests] == [("/files", 1.0)]
