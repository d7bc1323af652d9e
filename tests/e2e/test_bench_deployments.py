"""The deployments benchmark is never a timed test; this smoke run (4 MiB,
1 s load tests) only keeps it working: every deployment starts (SeaweedFS,
PostgreSQL, three servers on one database) and every figure is produced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from devtools import PROJECT_ROOT
from devtools.postgres import running_server
from devtools.seaweed import weed_binary

FIGURES = {
    "sqlite_local": ["upload", "create"],
    "sqlite_s3": ["upload"],
    "postgresql_local": ["create"],
    "postgresql_s3_1": ["create", "small_files"],
    "postgresql_s3_3": ["create", "small_files"],
}


def test_the_deployments_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "deployments.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.deployments", "--smoke", "--out", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    skipped: dict[str, str] = results["skipped"]
    # A part is skipped only for what this machine lacks, and says so.
    if weed_binary() is not None:
        assert "s3" not in skipped
    if running_server() is not None:
        assert "postgresql" not in skipped
    assert all(reason for reason in skipped.values())

    deployments: dict[str, Any] = results["deployments"]
    measured = [key for key in FIGURES if deployments[key] is not None]
    assert "sqlite_local" in measured
    if not skipped:
        assert measured == list(FIGURES)
        assert all(value > 0 for value in results["ratios"].values())
    for key in measured:
        found = deployments[key]
        for figure in FIGURES[key]:
            if figure == "upload":
                for how in ("multipart", "put"):
                    assert found[figure][how]["mb_s"]["median"] > 0
                    assert found[figure][how]["worker_peak_rss_mib"] > 0
            elif "load" not in skipped:
                load = found[figure]
                assert load["req_s"] > 0 and load["p99_ms"] > 0
                assert load["non_2xx"] == 0
    for key in ("sqlite_local", "postgresql_local", "postgresql_s3_1", "postgresql_s3_3"):
        create = (deployments[key] or {}).get("create")
        if create is not None:
            # Requests still in flight when wrk stops commit but are never counted.
            assert create["created"] <= create["rows"] <= create["created"] + create["connections"]
    assert "contention" in results["note"]
