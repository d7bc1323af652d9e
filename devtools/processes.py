"""Child processes the tests and the bench start: stopping them, and a
small tmpfs to fill up."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def stop_process(
    process: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGTERM
) -> None:
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
