"""The workers' metrics directory (ops/metrics_directory.py): empty at each
start, a server's own, gone when it stops."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quart_app.config import load_settings
from quart_app.metrics import MULTIPROC_DIR_VARIABLE
from quart_app.ops.metrics_directory import metrics_directory


def dead_pid() -> int:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(child.stdout)


def test_each_server_gets_an_empty_directory_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MULTIPROC_DIR_VARIABLE, raising=False)
    settings = load_settings({"INSTANCE_DIR": tmp_path, "STORAGE_DIR": tmp_path / "u"}, environ={})
    parent = tmp_path / "metrics"
    killed = parent / str(dead_pid())  # a server killed before it could tidy up
    killed.mkdir(parents=True)
    (killed / "counter_1.db").write_bytes(b"old")
    running = parent / str(os.getppid())  # another server still running
    running.mkdir()
    with metrics_directory(settings) as directory:
        assert directory == parent / str(os.getpid())
        assert os.environ[MULTIPROC_DIR_VARIABLE] == str(directory)
        assert list(directory.iterdir()) == []
        assert not killed.exists()
        assert running.exists()
        (directory / "counter_2.db").write_bytes(b"new")
    assert not directory.exists()
    assert MULTIPROC_DIR_VARIABLE not in os.environ


def test_an_operators_directory_is_used_and_emptied_of_old_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = tmp_path / "prometheus"
    given.mkdir()
    (given / "counter_1.db").write_bytes(b"old")
    (given / "README").write_text("not ours")
    monkeypatch.setenv(MULTIPROC_DIR_VARIABLE, str(given))
    settings = load_settings({"INSTANCE_DIR": tmp_path, "STORAGE_DIR": tmp_path / "u"}, environ={})
    with metrics_directory(settings) as directory:
        assert directory == given
        assert [p.name for p in given.iterdir()] == ["README"]
    assert given.exists()
    assert os.environ[MULTIPROC_DIR_VARIABLE] == str(given)
