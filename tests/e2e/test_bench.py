"""The benchmark is never a timed test; this smoke run (a few MiB) only
keeps `make bench` working: every server starts, every figure is produced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from devtools import PROJECT_ROOT


def test_the_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out), "--dir", str(tmp_path / "w")],
        cwd=PROJECT_ROOT, check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    results = json.loads(out.read_text())
    assert results["upload"]["multipart"]["mb_s"]["median"] > 0
    assert results["upload"]["put"]["peak_rss_mib_largest"] > 0
    assert set(results["peers"]) == {"stock_quart", "fastapi", "nothing", "nothing_256k"}
    assert results["tus"]["mb_s"]["median"] > 0
    assert results["ratios"]["multipart_vs_nothing"] is not None
    # What authentication costs: the check timed alone, and (with wrk) a load
    # run against the app with the check and without it.
    assert results["auth"]["check_us"]["small_files"] > 0
    assert results["auth"]["check_us"]["create"] > 0
    if results["auth"].get("load") is not None:
        for workload in ("create", "small_files"):
            load = results["auth"]["load"][workload]
            assert load["req_s_checked"] > 0 and load["req_s_skipped"] > 0
    if results["create"] is not None:
        # Requests still in flight when wrk stops commit but are never counted.
        create = results["create"]
        assert create["created"] <= create["rows"] <= create["created"] + create["connections"]
