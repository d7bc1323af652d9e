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
  variables read at import time are the interpreter's own (``PYTHON*``,
  the locale's, ``TZ``) and prometheus_client's ``PROMETHEUS_MULTIPROC_DIR``;
  a server whose environment differs from the zygote's in any of those is
  started fresh (``compatible``). The app reads its settings when it is
  built, in the child. The hash seed is the zygote's for every child.
- Its parent is the zygote, not the test process; the zygote reports its
  exit status, which ``ForkedProcess`` gives the way ``subprocess.Popen``
  does (a negative number for a signal). If the zygote ends, its children
  are sent SIGTERM and later servers start fresh.
- ``/proc/PID/environ`` and ``/proc/PID/cmdline`` show the zygote's (they
  are what the process was exec'd with).

Protocol: JSON requests a line on the zygote's stdin, ``{"spawn": ID,
"module", "args", "env", "cwd", "log"}`` and ``{"reap": PID}``; on its
stdout ``spawned ID PID``, and ``exited PID STATUS`` when a child ends. The
zygote reaps a child only when asked, once its status has been read: until
then it is a zombie and its pid cannot be reused, as with ``Popen``.

The bench starts its servers fresh (``fresh=True``, devtools/server.py):
its memory figures are of a process of its own (a child's peak RSS starts
at what it had at the fork).

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
import types
from pathlib import Path
from typing import IO, Any

from . import PROJECT_ROOT
from .processes import die_with_parent, status_field

# What ``python -m hypercorn`` and ``python -m quart_app serve`` import
# before they build the app: nothing a server would not import itself.
PRELOADED = ("hypercorn.config", "hypercorn.run", "hypercorn.asyncio.run", "hypercorn.utils")
PRELOADED_APP = "quart_app"
# Read at import time (by the interpreter, its locale and time zone, and
# prometheus_client, in either case), so a server must see the zygote's.
IMPORT_TIME_PREFIXES = ("PYTHON", "PROMETHEUS_", "LANG", "LC_", "TZ")
# How long a spawn may take to be answered (the zygote imports first).
SPAWN_TIMEOUT = 60.0


# -- the zygote process ------------------------------------------------------


def _write(fd: int, text: str) -> None:
    os.write(fd, text.encode())


def _report_exits(live: set[int], replies: int) -> None:
    """Say which children ended, without reaping them: a child stays a
    zombie, its pid not reused, until the test process has its status
    (as with subprocess.Popen) and asks for it to be reaped."""
    for pid in sorted(live):
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            live.discard(pid)
            continue
        if info is None:
            continue
        live.discard(pid)
        signalled = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
        _write(replies, f"exited {pid} {-info.si_status if signalled else info.si_status}\n")


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 512):
            pass


def _serve(requests: int, replies: int) -> dict[str, Any] | None:
    """Fork a child for each spawn request; return its request in the child,
    or None in the zygote once the test process has closed its stdin."""
    zygote = os.getpid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    live: set[int] = set()
    pending = b""
    selector = selectors.DefaultSelector()
    selector.register(requests, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fd == wake_r:
                _drain(wake_r)
                _report_exits(live, replies)
                continue
            data = os.read(requests, 1 << 16)
            if not data:
                return None
            pending += data
            while b"\n" in pending:
                line, _, pending = pending.partition(b"\n")
                request: dict[str, Any] = json.loads(line)
                if "reap" in request:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(request["reap"], 0)
                    continue
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    os.close(wake_r)
                    os.close(wake_w)
                    return {**request, "zygote": zygote}
                live.add(pid)
                _write(replies, f"spawned {request['spawn']} {pid}\n")


def _close_other_fds() -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own descriptor
                os.close(fd)


def _become(request: dict[str, Any]) -> None:
    """In the child: the server's process, as ``python -m`` would run it."""
    die_with_parent()
    if os.getppid() != request["zygote"]:
        os._exit(1)  # the zygote ended before the line above: nobody would stop this one
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the zygote ignores it
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
    if not sys.flags.safe_path:
        sys.path[0] = request["cwd"]  # python -m puts the working directory first
    sys.argv = ["-m", *request["args"]]
    # runpy runs the module in __main__'s namespace: a new one, not the zygote's.
    sys.modules["__main__"] = types.ModuleType("__main__")
    # Its SystemExit (or exception) ends this process as it would have ended
    # a process of its own.
    runpy._run_module_as_main(request["module"], alter_argv=True)  # type: ignore[attr-defined]


def main() -> None:
    import importlib

    # Ctrl-C in a terminal reaches the whole process group: the servers and
    # pytest handle it; the zygote ends when pytest closes its stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
            self._zygote.wait_for(self, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._zygote.wait_for(self, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        # Until its status is read it is a zombie at worst: the pid is its own.
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
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
        # No PR_SET_PDEATHSIG: it would tie the zygote to the thread that
        # started it. The end of its stdin (this process gone) ends it, and
        # its children then get SIGTERM.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "devtools.zygote"],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
        )
        self._lock = threading.Lock()
        self._pending = b""
        self._requests = 0
        self._asked: dict[int, list[str]] = {}  # spawn request id: its args
        self._spawned: dict[int, ForkedProcess] = {}  # request id: its child
        self._children: dict[int, ForkedProcess] = {}  # pid: child still running
        self.gone = False

    def compatible(self, env: dict[str, str]) -> bool:
        """Whether a server with ``env`` would import what the zygote did."""
        names = {n for n in (*env, *self.env) if n.upper().startswith(IMPORT_TIME_PREFIXES)}
        return all(env.get(n) == self.env.get(n) for n in names)

    def spawn(
        self, module: str, args: list[str], env: dict[str, str], cwd: Path, log: Path
    ) -> ForkedProcess:
        with self._lock:
            self._requests += 1
            ask = self._requests
            self._asked[ask] = [module, *args]
            request = {"spawn": ask, "module": module, "args": args, "env": env}
            self._send({**request, "cwd": str(cwd), "log": str(log)})
            deadline = time.monotonic() + SPAWN_TIMEOUT
            while ask not in self._spawned:
                if time.monotonic() > deadline:
                    raise ZygoteGone(f"no answer in {SPAWN_TIMEOUT:.0f} s")
                self._read(1.0)
            return self._spawned.pop(ask)

    def wait_for(self, process: ForkedProcess, timeout: float | None) -> None:
        """Until ``process`` has its returncode, or ``timeout`` has passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while process.returncode is None:
            with self._lock:  # let go between reads: others may spawn or wait
                if not self.gone:
                    left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                    with contextlib.suppress(ZygoteGone):  # then as below
                        self._read(max(0.0, left))  # what has come, even with no time left
            if self.gone and process.returncode is None:
                process.returncode = self._orphaned(process.pid)
                if process.returncode is None and timeout != 0:
                    time.sleep(0.05)
            if deadline is not None and time.monotonic() >= deadline:
                return

    @staticmethod
    def _orphaned(pid: int) -> int | None:
        """The zygote is gone, and the exit statuses of its children with
        it; they were sent SIGTERM (PR_SET_PDEATHSIG) when it ended, and
        this tells only whether they have ended since."""
        return -signal.SIGTERM if status_field(pid, "State") in (None, "Z") else None

    def _send(self, request: dict[str, Any]) -> None:
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(json.dumps(request).encode() + b"\n")
            self._process.stdin.flush()
        except BrokenPipeError as error:
            self.gone = True
            raise ZygoteGone(self._why()) from error

    def _read(self, timeout: float) -> None:
        assert self._process.stdout is not None
        fd = self._process.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            return
        data = os.read(fd, 1 << 16)
        if not data:
            self.gone = True
            raise ZygoteGone(self._why())
        self._pending += data
        while b"\n" in self._pending:
            line, _, self._pending = self._pending.partition(b"\n")
            word, first, second = line.decode().split()
            if word == "spawned":
                ask, pid = int(first), int(second)
                child = ForkedProcess(self, pid, self._asked.pop(ask))
                self._spawned[ask] = self._children[pid] = child
            else:
                pid, status = int(first), int(second)
                ended = self._children.pop(pid, None)
                if ended is not None:
                    ended.returncode = status
                self._send({"reap": pid})

    def _why(self) -> str:
        self._errors.seek(0)
        return "the zygote ended: " + self._errors.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        if self._process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._errors.close()


def base_environment() -> dict[str, str]:
    """This process's environment without the app's settings, with the
    project importable: what every test server starts from."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUART_APP_")}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    return env


_zygote: Zygote | None = None
_zygote_lock = threading.Lock()


def zygote_for(env: dict[str, str]) -> Zygote | None:
    """This test process's zygote, started on first use, when it can fork a
    server with ``env``; None when that server must start fresh (so must
    every server once the zygote has ended)."""
    global _zygote
    if os.environ.get("QUART_APP_TEST_ZYGOTE", "1") == "0":
        return None
    with _zygote_lock:
        if _zygote is None:
            _zygote = Zygote(base_environment())
            atexit.register(_zygote.close)
        zygote = _zygote
    if zygote.gone or not zygote.compatible(env):
        return None
    return zygote


if __name__ == "__main__":
    main()
