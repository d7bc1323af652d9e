"""Starting the servers under test, and reading their memory."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devtools import PROJECT_ROOT
from devtools.auth import bearer, create_user_key
from devtools.ports import free_port
from devtools.processes import stop_process


@dataclass
class Server:
    name: str
    root: Path
    port: int
    process: subprocess.Popen[bytes]
    # Sent with every request the bench makes (curl, wrk, tuspy, httpx): where
    # an API key goes once requests need one.
    headers: dict[str, str] = field(default_factory=dict)
    # Sent instead where the request needs an admin key (POST /users).
    admin_headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The server process and every descendant (Hypercorn's workers)."""
        found = [self.process.pid]
        index = 0
        while index < len(found):
            pid = found[index]
            children = Path(f"/proc/{pid}/task/{pid}/children")
            if children.exists():
                found += [int(p) for p in children.read_text().split()]
            index += 1
        return found

    def reset_peak_memory(self) -> None:
        """Writing 5 to clear_refs resets VmHWM (Linux 4.0+)."""
        for pid in self.pids():
            Path(f"/proc/{pid}/clear_refs").write_text("5")

    def peak_memory_mib(self) -> tuple[float, float]:
        """(largest, sum) of VmHWM over the server's processes, in MiB.
        The supervisor and multiprocessing's resource tracker are counted
        in the sum; the largest is the worker."""
        peaks = []
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        return max(peaks), sum(peaks)

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the server's processes."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def stop(self) -> None:
        stop_process(self.process, timeout=20)


def _wait_ready(server: Server, path: str) -> Server:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited: see {server.root / 'server.log'}")
        try:
            httpx.get(server.url + path, timeout=1)
            return server
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not start")


def _launch(name: str, root: Path, argv: list[str], env: dict[str, str], port: int) -> Server:
    """Start the process; not waited for."""
    root.mkdir(parents=True, exist_ok=True)
    argv = [a.replace("{port}", str(port)) for a in argv]
    environment = {**os.environ, **env, "PYTHONPATH": str(PROJECT_ROOT)}
    with (root / "server.log").open("ab") as log:
        process = subprocess.Popen(
            argv, cwd=root, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    return Server(name, root, port, process)


def _spawn(name: str, root: Path, argv: list[str], env: dict[str, str], ready: str) -> Server:
    return _wait_ready(_launch(name, root, argv, env, free_port()), ready)


def hypercorn(*args: str) -> list[str]:
    return [sys.executable, "-m", "hypercorn", *args]


def start_ours(
    root: Path,
    extra_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
    app: str = "quart_app:create_app()",
) -> Server:
    """quart_app as deployed, with keys made as an operator makes them: the
    environment's admin key creates a user with a read and write key (sent
    on every request) and an admin key of the operator's own (for POST
    /users). Both are keys from the database, so every request takes the
    path a deployment's clients take: the key cache, not the environment
    key's comparison. ``extra_args`` / ``extra_env``: Hypercorn arguments and
    settings for A/B runs."""
    return start_ours_together([root], extra_args, extra_env, app)[0]


def start_ours_together(
    roots: list[Path],
    extra_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
    app: str = "quart_app:create_app()",
) -> list[Server]:
    """One quart_app server per root, as several servers are deployed
    (README "PostgreSQL and several servers"): one database and one storage,
    which ``extra_env`` must name when there are several, one admin key and
    one secret key; the schema migrated once, then every server started at
    the same moment, each on its own port. The keys (start_ours) live in
    the shared database, so every server takes them."""
    admin_key = "qa_bench-admin-" + secrets.token_urlsafe(24)
    shared = {"QUART_APP_ADMIN_KEY": admin_key, **(extra_env or {})}
    if len(roots) > 1:
        if "QUART_APP_DATABASE_URL" not in shared or not (
            {"QUART_APP_STORAGE_URL", "QUART_APP_STORAGE_DIR"} & shared.keys()
        ):
            raise ValueError("several servers need one database and one storage in extra_env")
        # A paging cursor signed by one server is then good at any other.
        shared.setdefault("QUART_APP_SECRET_KEY", secrets.token_urlsafe(32))
    envs = [
        {
            "QUART_APP_STORAGE_DIR": str(root / "uploads"),
            "QUART_APP_INSTANCE_DIR": str(root / "instance"),
            "QUART_APP_DATABASE_URL": f"sqlite+aiosqlite:///{root / 'instance' / 'db.sqlite3'}",
            **shared,
        }
        for root in roots
    ]
    # As deployed: the schema migrated first (so workers never load Alembic,
    # ~9 MiB each), then the project's own hypercorn.toml, access logs and all.
    for root in roots:
        root.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "quart_app", "migrate"],
        env={**os.environ, **envs[0], "PYTHONPATH": str(PROJECT_ROOT)},
        cwd=roots[0], check=True, capture_output=True,
    )  # fmt: skip
    argv = hypercorn(
        "-c", str(PROJECT_ROOT / "hypercorn.toml"), "--bind", "127.0.0.1:{port}",
        *extra_args, app,
    )  # fmt: skip
    servers: list[Server] = []
    try:
        for index, (root, env) in enumerate(zip(roots, envs, strict=True)):
            name = "quart_app" if len(roots) == 1 else f"quart_app #{index + 1}"
            servers.append(_launch(name, root, argv, env, free_port()))
        for server in servers:
            _wait_ready(server, "/healthz")
        _, user_key = create_user_key(servers[0].url, ("read", "write"), admin_key)
        operator_key = create_operator_key(servers[0].url, admin_key)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    for server in servers:
        server.headers = bearer(user_key)
        server.admin_headers = bearer(operator_key)
    return servers


@contextmanager
def running(servers: list[Server]) -> Iterator[list[Server]]:
    """``with running(start_ours_together(...)) as servers:``, or
    ``with running([start_ours(...)]) as [server]:``: every one stopped at
    the end, whatever happened."""
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def create_operator_key(url: str, admin_key: str) -> str:
    """An admin key of the operator account (user 0), kept in the database."""
    answer = httpx.post(
        f"{url}/users/0/keys", json={"scopes": ["admin"]}, headers=bearer(admin_key), timeout=30
    )
    answer.raise_for_status()
    secret: str = answer.json()["secret"]
    return secret


def start_stock_quart(root: Path) -> Server:
    argv = hypercorn("--bind", "127.0.0.1:{port}", "bench.peers.stock_quart:app")
    return _spawn("stock Quart", root, argv, {"PEER_DIR": str(root / "data")}, "/healthz")


def start_fastapi(root: Path) -> Server:
    # As uvicorn's docs advise deploying it: uvloop and httptools.
    argv = [
        sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}",
        "--loop", "uvloop", "--http", "httptools", "--no-access-log",
        "bench.peers.fastapi_app:app",
    ]  # fmt: skip
    return _spawn("FastAPI", root, argv, {"PEER_DIR": str(root / "data")}, "/healthz")


def start_nothing(root: Path) -> Server:
    argv = hypercorn("--bind", "127.0.0.1:{port}", "bench.peers.nothing:app")
    return _spawn("do-nothing", root, argv, {}, "/")


def start_nothing_256k(root: Path) -> Server:
    argv = hypercorn("--bind", "127.0.0.1:{port}", "bench.peers.nothing_256k:app")
    return _spawn("do-nothing 256K", root, argv, {}, "/")
