"""Child processes the tests and the bench start: stopping them, and a
small tmpfs to fill up."""

from __future__ import annotations

import ctypes
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol


class Process(Protocol):
    """What the tests use of a child process: ``subprocess.Popen``, or a
    server forked by the zygote (devtools/zygote.py)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


def status_field(pid: int, name: str) -> str | None:
    """The first word of ``name`` in /proc/PID/status (``State`` "Z" for a
    zombie, ``PPid``, ``VmHWM`` in kB), or None once the process is reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    for line in status.splitlines():
        if line.startswith(name + ":"):
            return line.split()[1]
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def die_with_parent() -> None:
    """In the child: SIGTERM when its parent dies, so a killed test run
    leaves no server behind (Linux PR_SET_PDEATHSIG; with ``preexec_fn``,
    the parent is the thread that started it)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_process(process: Process, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Ask politely (``sig``), then kill after ``timeout`` seconds."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[str | None]:
    """A tmpfs of ``size`` mounted at ``mount_point`` while the block runs:
    yields None, or why this machine would not mount one (not root...)."""
    mount_point.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        yield result.stderr.strip() or f"mount exited {result.returncode}"
        return
    try:
        yield None
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
