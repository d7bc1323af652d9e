"""Servers forked from a process that has already imported them.

Each e2e server used to be a fresh ``python -m hypercorn ...`` that spent
most of its 1.5 s start importing Quart, SQLAlchemy and the app (README
"Running the tests"). The zygote is one process per test process that
imports those once (and nothing else: no app is built, no file opened, no
thread started) and then forks a child for each server; the child sets the
server's environment, working directory and log, and runs ``python -m
<module> <args>`` as the interpreter would (``runpy``), so it is the same
Hypercorn process, serving the same app built from the same settings, and it
ends as that process would end (its exit status, atexit, flushed logs).

What differs from a fresh process, and why it does not matter here:
- Modules imported before the environment was set. The environment
  variables read at import time are the interpreter's own (``PYTHON*``) and
  prometheus_client's ``PROMETHEUS_MULTIPROC_DIR``; a server whose
  environment differs from the zygote's in any of those is started fresh
  (``compatible``). The app reads its settings when it is built, in the child.
- Its parent is the zygote, not the test process; the zygote reaps it and
  reports its exit status, which ``ForkedProcess`` gives the way
  ``subprocess.Popen`` does (a negative number for a signal).

Protocol: one JSON request a line on the zygote's stdin (``module``,
``args``, ``env``, ``cwd``, ``log``); on its stdout ``spawned PID`` for each
request in order, and ``exited PID STATUS`` whenever a child ends.

``QUART_APP_TEST_ZYGOTE=0`` starts every server fresh instead.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import runpy
import select
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

from . import PROJECT_ROOT
from .processes import die_with_parent

# What ``python -m hypercorn`` and ``python -m quart_app serve`` import
# before they build the app: nothing a server would not import itself.
PRELOADED = ("hypercorn.config", "hypercorn.run", "hypercorn.asyncio.run", "hypercorn.utils")
PRELOADED_APP = "quart_app"
# Read at import time, so a server must see the zygote's values of them.
IMPORT_TIME_PREFIXES = ("PYTHON", "PROMETHEUS_")


# -- the zygote process ------------------------------------------------------


def _write(fd: int, text: str) -> None:
    os.write(fd, text.encode())


def _reap(replies: int) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _write(replies, f"exited {pid} {os.waitstatus_to_exitcode(status)}\n")


def _serve(requests: int, replies: int) -> dict[str, Any] | None:
    """Fork a child for each request; return its request in the child, or
    None in the zygote once the test process has closed its stdin."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    pending = b""
    selector = selectors.DefaultSelector()
    selector.register(requests, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fd == wake_r:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
                _reap(replies)
                continue
            data = os.read(requests, 1 << 16)
            if not data:
                return None
            pending += data
            while b"\n" in pending:
                line, _, pending = pending.partition(b"\n")
                request: dict[str, Any] = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    os.close(wake_r)
                    os.close(wake_w)
                    return request
                _write(replies, f"spawned {pid}\n")


def _close_other_fds() -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own descriptor
                os.close(fd)


def _become(request: dict[str, Any]) -> None:
    """In the child: the server's process, as ``python -m`` would run it."""
    die_with_parent()
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _close_other_fds()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = request["cwd"]  # python -m puts the working directory first
    sys.argv = ["-m", *request["args"]]
    # Its SystemExit (or exception) ends this process as it would have ended
    # a process of its own.
    runpy._run_module_as_main(request["module"], alter_argv=True)  # type: ignore[attr-defined]


def main() -> None:
    import importlib

    for name in (*PRELOADED, PRELOADED_APP):
        importlib.import_module(name)
    if threading.active_count() != 1:
        raise SystemExit("the zygote would fork with threads running")
    request = _serve(sys.stdin.fileno(), sys.stdout.fileno())
    if request is not None:
        _become(request)


# -- the test process's side ---------------------------------------------------


class ZygoteGone(RuntimeError):
    pass


class ForkedProcess:
    """A child of the zygote, with what the tests use of ``subprocess.Popen``."""

    def __init__(self, zygote: Zygote, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._zygote = zygote

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.exit_status(self.pid, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._zygote.exit_status(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # ended since, as Popen allows
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        # Where the zygote's own errors go (read when it is gone).
        self._errors: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self._process = subprocess.Popen(
            [sys.executable, "-m", "devtools.zygote"],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            preexec_fn=die_with_parent,
        )
        self._lock = threading.Lock()
        self._pending = b""
        self._spawned: deque[int] = deque()
        self._exits: dict[int, int] = {}

    def compatible(self, env: dict[str, str]) -> bool:
        """Whether a server with ``env`` would import what the zygote did."""
        names = {n for n in (*env, *self.env) if n.startswith(IMPORT_TIME_PREFIXES)}
        return all(env.get(n) == self.env.get(n) for n in names)

    def spawn(
        self, module: str, args: list[str], env: dict[str, str], cwd: Path, log: Path
    ) -> ForkedProcess:
        request = {"module": module, "args": args, "env": env, "cwd": str(cwd), "log": str(log)}
        assert self._process.stdin is not None
        with self._lock:
            try:
                self._process.stdin.write(json.dumps(request).encode() + b"\n")
                self._process.stdin.flush()
            except BrokenPipeError as error:
                raise ZygoteGone(self._why()) from error
            while not self._spawned:
                self._read(60.0)
            pid = self._spawned.popleft()
        return ForkedProcess(self, pid, [module, *args])

    def exit_status(self, pid: int, timeout: float | None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:  # let go between reads: others may spawn or wait
                if pid not in self._exits:
                    left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                    self._read(max(0.0, left))  # what has come, even with no time left
                if pid in self._exits:
                    return self._exits[pid]
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _read(self, timeout: float) -> None:
        assert self._process.stdout is not None
        fd = self._process.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            return
        data = os.read(fd, 1 << 16)
        if not data:
            raise ZygoteGone(self._why())
        self._pending += data
        while b"\n" in self._pending:
            line, _, self._pending = self._pending.partition(b"\n")
            word, *numbers = line.decode().split()
            if word == "spawned":
                self._spawned.append(int(numbers[0]))
            else:
                self._exits[int(numbers[0])] = int(numbers[1])

    def _why(self) -> str:
        self._errors.seek(0)
        return "the zygote ended: " + self._errors.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


_zygote: Zygote | None = None
_zygote_lock = threading.Lock()


def zygote_for(env: dict[str, str]) -> Zygote | None:
    """This test process's zygote, started on first use, when it can fork a
    server with ``env``; None when that server must start fresh."""
    global _zygote
    if os.environ.get("QUART_APP_TEST_ZYGOTE", "1") == "0":
        return None
    with _zygote_lock:
        if _zygote is None:
            base = {k: v for k, v in os.environ.items() if not k.startswith("QUART_APP_")}
            base["PYTHONPATH"] = str(PROJECT_ROOT)
            _zygote = Zygote(base)
            atexit.register(_zygote.close)
        zygote = _zygote
    return zygote if zygote.compatible(env) else None


if __name__ == "__main__":
    main()
