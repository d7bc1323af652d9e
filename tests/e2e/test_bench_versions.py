"""bench.versions is never a timed test; this smoke run only keeps it
working: two versions (here the same commit twice) checked out, served
and measured, a median for each, and no worktree left behind."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from devtools import PROJECT_ROOT


def worktrees() -> str:
    return subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "worktree", "list"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_two_versions_are_measured_one_after_the_other() -> None:
    before = worktrees()
    done = subprocess.run(
        [sys.executable, "-m", "bench.versions", "HEAD,HEAD", "patch", "--rounds", "1"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for label in ("HEAD#1", "HEAD#2"):
        assert re.search(rf"^round 1 {label}: ", done.stdout, re.MULTILINE), done.stdout
        median = re.search(rf"^median {label}: {{'patch_ms': ([\d.]+)}}$", done.stdout, re.M)
        assert median and float(median.group(1)) > 0, done.stdout
    assert worktrees() == before
