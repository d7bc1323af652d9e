"""The directory where a server's Hypercorn workers write their metric
values, so that a scrape answered by any of them adds up all of them
(quart_app/metrics.py, README "Metrics").

prometheus_client reads ``PROMETHEUS_MULTIPROC_DIR`` once, when a process
first imports it: ``python -m quart_app serve`` sets it before Hypercorn
spawns the workers, which inherit it. The directory must start empty (a
previous run's files would add their counts to this one's): each server
takes ``INSTANCE_DIR/metrics/<its pid>``, new, and removes it when it stops;
directories of servers that are no longer running (killed) go at the next
start. Two servers sharing an instance directory keep their own figures.
An operator's own ``PROMETHEUS_MULTIPROC_DIR`` is used as it is, emptied of
the value files it holds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from quart_app.config import Settings
from quart_app.metrics import MULTIPROC_DIR_VARIABLE
from quart_app.ops.startup import startup_step

METRICS_SUBDIRECTORY = "metrics"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(parent: Path) -> None:
    for child in parent.iterdir():
        if child.is_dir() and child.name.isdigit() and not _running(int(child.name)):
            shutil.rmtree(child, ignore_errors=True)


@contextlib.contextmanager
def metrics_directory(settings: Settings) -> Iterator[Path]:
    """An empty directory in ``PROMETHEUS_MULTIPROC_DIR`` while the block
    runs (the server's life); StartupError if it cannot be made."""
    given = os.environ.get(MULTIPROC_DIR_VARIABLE)
    with startup_step("metrics directory"):
        if given:
            directory = Path(given)
            directory.mkdir(parents=True, exist_ok=True)
            for stale in directory.glob("*.db"):
                stale.unlink()
        else:
            parent = settings.INSTANCE_DIR / METRICS_SUBDIRECTORY
            parent.mkdir(parents=True, exist_ok=True)
            _remove_stale(parent)
            directory = parent / str(os.getpid())
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
    os.environ[MULTIPROC_DIR_VARIABLE] = str(directory)
    try:
        yield directory
    finally:
        if not given:
            os.environ.pop(MULTIPROC_DIR_VARIABLE, None)
            shutil.rmtree(directory, ignore_errors=True)
