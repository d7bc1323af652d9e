"""The imports benchmark keeps working (its figures are read from `make
bench`, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from devtools import PROJECT_ROOT


def test_the_imports_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "imports.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.imports", "--smoke", "--out", str(out)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["small_files"]["files"] == 100
    assert figures["many_entries"]["entries"] == 1000
    assert figures["big_archive"]["worker_peak_rss_mib"] > 0
