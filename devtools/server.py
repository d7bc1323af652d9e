"""Start the real thing: Hypercorn with the project's hypercorn.toml, on a
free loopback port, over its own database and storage directory."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from devtools.auth import TEST_ADMIN_KEY
from devtools.processes import Process, die_with_parent, status_field, stop_process
from devtools.zygote import base_environment, zygote_for

from . import PROJECT_ROOT
from .ports import free_port

APPLICATION = "quart_app:create_app()"


@dataclass
class RunningServer:
    root: Path
    port: int
    env: dict[str, str]
    # Hypercorn command-line options added after the project's hypercorn.toml.
    args: list[str] = field(default_factory=list)
    process: Process | None = None
    # (certfile, keyfile): also serve TLS on tls_port, where HTTP/2 is
    # negotiated by ALPN; `port` stays plain HTTP/1.1.
    tls: tuple[Path, Path] | None = None
    tls_port: int = 0
    # Start with `python -m quart_app serve` (what `make run` runs: checks
    # first, and the workers' metrics directory) rather than plain Hypercorn;
    # `args` are then serve's (--workers N).
    serve: bool = False
    # A process of its own rather than one forked from the zygote
    # (devtools/zygote.py): the bench's memory figures are of such a process.
    fresh: bool = False
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def storage_dir(self) -> Path:
        return Path(self.env["QUART_APP_STORAGE_DIR"])

    @property
    def database_path(self) -> Path:
        return Path(self.env["QUART_APP_DATABASE_URL"].partition(":///")[2])

    def start(self, timeout: float = 20.0) -> None:
        self.spawn()
        self.wait_until_serving(timeout)

    def spawn(self) -> None:
        """Start the process without waiting for it to serve."""
        with self.log_path.open("ab") as log:
            self.process = self._spawn(log)

    def command(self) -> list[str]:
        config = str(PROJECT_ROOT / "hypercorn.toml")
        binds = ["--bind", f"127.0.0.1:{self.port}"]
        if self.serve:
            assert self.tls is None, "serve takes no TLS options"
            return [
                sys.executable,
                "-m",
                "quart_app",
                "serve",
                "--config",
                config,
                *binds,
                *self.args,
            ]
        if self.tls is not None:
            certfile, keyfile = self.tls
            binds = [
                *("--bind", f"127.0.0.1:{self.tls_port}"),
                *("--insecure-bind", f"127.0.0.1:{self.port}"),
                *("--certfile", str(certfile), "--keyfile", str(keyfile)),
            ]
        return [sys.executable, "-m", "hypercorn", "-c", config, *binds, *self.args, APPLICATION]

    def _spawn(self, log: IO[bytes]) -> Process:
        command = self.command()
        zygote = None if self.fresh else zygote_for(self.env)
        if zygote is not None:
            # Forked from a process that has imported the app (devtools/zygote.py).
            module, args = command[2], command[3:]
            return zygote.spawn(module, args, self.env, self.root, self.log_path)
        return subprocess.Popen(
            command,
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )

    def wait_until_serving(self, timeout: float = 20.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        stop_process(self.process, timeout=15, sig=sig)
        self.process = None

    def access_lines(self) -> list[dict[str, Any]]:
        """The app's JSON access-log lines so far."""
        lines = [json.loads(x) for x in self.log().splitlines() if x.startswith("{")]
        return [x for x in lines if x.get("logger") == "quart_app.access"]

    def wait_for_access(
        self, matches: Callable[[dict[str, Any]], bool], count: int = 1, timeout: float = 15
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` access lines match. A line is written once the
        app is done with a request (cleanup included), after the response."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.access_lines() if matches(line)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no such access line; log tail:\n{self.log()[-2000:]}")
            time.sleep(0.05)

    def worker_pid(self) -> int:
        """The worker process (Hypercorn runs the app in a child process)."""
        assert self.process is not None
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        candidates = [pid, *(int(child) for child in children)]
        return max(candidates, key=rss_mib)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def worker_pid(server: RunningServer) -> int:
    """Hypercorn serves from a spawned worker; its parent only supervises."""
    assert server.process is not None
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    pids = [int(p) for p in children.read_text().split()]
    for pid in pids:
        if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text():
            return pid
    return server.process.pid


def memory_kib(pid: int, field: str) -> int:
    value = status_field(pid, field)
    assert value is not None, f"process {pid} is gone"
    return int(value)


def rss_mib(pid: int) -> float:
    """Resident memory of a process now, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def prepare_server(
    root: Path,
    extra_env: dict[str, str] | None = None,
    args: list[str] | None = None,
    tls: tuple[Path, Path] | None = None,
    serve: bool = False,
    fresh: bool = False,
) -> RunningServer:
    """A server over its own database and storage under ``root`` (unless
    ``extra_env`` says otherwise), not started yet."""
    root.mkdir(parents=True, exist_ok=True)
    env = base_environment()
    env.update(
        {
            "QUART_APP_STORAGE_DIR": str(root / "uploads"),
            "QUART_APP_INSTANCE_DIR": str(root / "instance"),
            "QUART_APP_DATABASE_URL": f"sqlite+aiosqlite:///{root / 'instance' / 'db.sqlite3'}",
            "QUART_APP_ADMIN_KEY": TEST_ADMIN_KEY,
            # Every blob in a file, as large ones are (tests check the disk);
            # blobs kept in rows: tests/app/test_inline_blobs.py and the bench.
            "QUART_APP_INLINE_BLOB_BYTES": "0",
        }
    )
    env.update(extra_env or {})
    running = RunningServer(
        root=root, port=free_port(), env=env, args=list(args or []), serve=serve, fresh=fresh
    )
    if tls is not None:
        running.tls, running.tls_port = tls, free_port()
    return running


def start_server(
    root: Path,
    extra_env: dict[str, str] | None = None,
    args: list[str] | None = None,
    tls: tuple[Path, Path] | None = None,
    serve: bool = False,
    fresh: bool = False,
) -> RunningServer:
    running = prepare_server(root, extra_env, args, tls, serve, fresh)
    running.start()
    return running


def start_servers(
    roots: list[Path], shared_env: dict[str, str], timeout: float = 20.0
) -> list[RunningServer]:
    """Servers started at the same moment (they migrate, recover... at
    once), then waited for, each up to ``timeout`` seconds; each with its
    own root, and ``shared_env`` (one database, one storage, one secret) in
    common. A server started fresh is sent SIGTERM when the thread that
    started it ends (PR_SET_PDEATHSIG); a forked one when the zygote does,
    with the test process (devtools/zygote.py)."""
    servers = [prepare_server(root, shared_env) for root in roots]
    try:
        for server in servers:
            server.spawn()
        for server in servers:
            server.wait_until_serving(timeout)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers
