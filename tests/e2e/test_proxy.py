"""Behind a real reverse proxy: Debian's nginx, running deploy/nginx.conf,
in front of a real Hypercorn.

nginx runs in the foreground (``daemon off; master_process off;``) with its
own config, pid file, logs and temp paths in the test's temp directory, on
a free loopback port. It terminates no TLS: it sets ``X-Forwarded-Proto:
https`` as a TLS front would. Clients that go around it connect to
Hypercorn from 127.0.0.2, which is not a trusted proxy (nginx connects from
127.0.0.1, which is).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools import PROJECT_ROOT
from devtools.auth import bearer_line
from devtools.curl import curl
from devtools.ports import free_port
from devtools.processes import die_with_parent, stop_process
from devtools.server import RunningServer, memory_kib, start_server, worker_pid

TEMPLATE = PROJECT_ROOT / "deploy" / "nginx.conf"
PUBLIC_NAME = "files.example.test"
OUTSIDER = "127.0.0.2"  # a client that reaches Hypercorn without nginx
SPOOF = [
    "-H",
    "X-Forwarded-Host: evil.example",
    "-H",
    "X-Forwarded-Proto: http",
    "-H",
    "X-Forwarded-For: 6.6.6.6",
    "-H",
    "Forwarded: for=6.6.6.6;proto=http;host=evil.example",
]


def _find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
    )


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    """Debian's nginx; installed with apt-get when missing and we are root."""
    found = _find_nginx()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "nginx"]):
            try:
                subprocess.run(command, env=env, capture_output=True, timeout=600, check=True)
            except (OSError, subprocess.SubprocessError):
                break
        found = _find_nginx()
    if found is None:
        pytest.skip(
            "nginx is not installed and could not be installed "
            "(apt-get install nginx needs root and a reachable package mirror)"
        )
    return found


@dataclass
class Nginx:
    root: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process, timeout=10)


def render_site(nginx_port: int, backend_port: int) -> str:
    """deploy/nginx.conf with its placeholders filled in."""
    site = TEMPLATE.read_text()
    values = {
        "@LISTEN@": f"127.0.0.1:{nginx_port}",
        "@SERVER_NAME@": PUBLIC_NAME,
        "@BACKEND@": f"127.0.0.1:{backend_port}",
        "@FORWARDED_PROTO@": "https",
    }
    for placeholder, value in values.items():
        site = site.replace(placeholder, value)
    assert not re.findall(r"@[A-Z_]+@", site), "a placeholder the test does not fill"
    return site


def start_nginx(binary: str, root: Path, backend: RunningServer) -> Nginx:
    root.mkdir(parents=True)
    port = free_port()
    (root / "site.conf").write_text(render_site(port, backend.port))
    (root / "nginx.conf").write_text(
        f"""
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{
    worker_connections 64;
}}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    include {root}/site.conf;
}}
"""
    )
    error_log, config = str(root / "error.log"), str(root / "nginx.conf")
    command = [binary, "-p", str(root), "-e", error_log, "-c", config]
    with (root / "stdout.log").open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    nginx = Nginx(root, port, process)
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited:\n{nginx.error_log()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return nginx
        except OSError:
            if time.monotonic() > deadline:
                nginx.stop()
                raise RuntimeError(f"nginx did not start:\n{nginx.error_log()}") from None
            time.sleep(0.05)


@contextmanager
def behind_nginx(
    nginx_binary: str, tmp_path: Path, env: dict[str, str]
) -> Iterator[tuple[Nginx, RunningServer]]:
    """A Hypercorn with ``env`` and nginx in front of it, both stopped after."""
    server = start_server(tmp_path / "server", env)
    try:
        nginx = start_nginx(nginx_binary, tmp_path / "nginx", server)
        try:
            yield nginx, server
        finally:
            nginx.stop()
    finally:
        server.stop()


@pytest.fixture
def proxied(nginx_binary: str, tmp_path: Path) -> Iterator[tuple[Nginx, RunningServer]]:
    """nginx in front of a Hypercorn that trusts it, with no public URL."""
    with behind_nginx(nginx_binary, tmp_path, {"QUART_APP_TRUSTED_PROXIES": "127.0.0.1"}) as pair:
        yield pair


def create_user(url: str, email: str, *args: str) -> str:
    status, headers, body = curl(
        "-X",
        "POST",
        f"{url}/users",
        "-H",
        "Content-Type: application/json",
        "-d",
        json.dumps({"name": "Ada", "email": email}),
        *args,
    )
    assert status == 201, body
    return headers["location"]


def test_location_carries_the_scheme_and_host_the_client_used(
    proxied: tuple[Nginx, RunningServer],
) -> None:
    nginx, _ = proxied
    location = create_user(nginx.url, "a@example.com", "-H", f"Host: {PUBLIC_NAME}")
    assert location == f"https://{PUBLIC_NAME}/users/1"
    # curl's own Host, with the port nginx listens on.
    location = create_user(nginx.url, "b@example.com")
    assert location == f"https://127.0.0.1:{nginx.port}/users/2"


def test_a_client_cannot_spoof_through_the_proxy(proxied: tuple[Nginx, RunningServer]) -> None:
    nginx, server = proxied
    # From another address than nginx's own, as a real client would be.
    args = ["--interface", OUTSIDER, "-H", f"Host: {PUBLIC_NAME}", *SPOOF]
    location = create_user(nginx.url, "a@example.com", *args)
    assert location == f"https://{PUBLIC_NAME}/users/1"
    [line] = server.wait_for_access(lambda x: x["path"] == "/users")
    assert line["client"] == f"{OUTSIDER}:0"  # the address nginx saw, not 6.6.6.6


def test_a_client_that_goes_around_the_proxy_cannot_spoof(
    proxied: tuple[Nginx, RunningServer],
) -> None:
    _, server = proxied
    location = create_user(server.url, "a@example.com", "--interface", OUTSIDER, *SPOOF)
    assert location == f"http://127.0.0.1:{server.port}/users/1"
    [line] = server.wait_for_access(lambda x: x["path"] == "/users")
    assert line["client"].startswith(f"{OUTSIDER}:")


def test_a_malformed_host_through_the_proxy_is_a_400_problem(
    proxied: tuple[Nginx, RunningServer],
) -> None:
    nginx, _ = proxied
    status, headers, body = curl(f"{nginx.url}/healthz", "-H", "Host: evil.example:99999")
    assert (status, headers["content-type"]) == (400, "application/problem+json")
    assert json.loads(body)["type"] == "urn:quart-app:problem:invalid-host"


@pytest.fixture
def proxied_public(nginx_binary: str, tmp_path: Path) -> Iterator[tuple[Nginx, RunningServer]]:
    """nginx in front of a Hypercorn with QUART_APP_PUBLIC_URL set."""
    env = {
        "QUART_APP_TRUSTED_PROXIES": "127.0.0.1",
        "QUART_APP_PUBLIC_URL": "https://files.example.com",
    }
    with behind_nginx(nginx_binary, tmp_path, env) as pair:
        yield pair


def test_with_a_public_url_every_client_gets_it(
    proxied_public: tuple[Nginx, RunningServer],
) -> None:
    nginx, server = proxied_public
    assert create_user(nginx.url, "a@example.com", *SPOOF) == "https://files.example.com/users/1"
    direct = create_user(server.url, "b@example.com", "--interface", OUTSIDER, *SPOOF)
    assert direct == "https://files.example.com/users/2"


def test_a_64_mib_upload_streams_through_the_proxy_intact(
    proxied_public: tuple[Nginx, RunningServer], tmp_path: Path
) -> None:
    nginx, server = proxied_public
    pid = worker_pid(server)
    warm = tmp_path / "warm"
    warm.write_bytes(os.urandom(1024 * 1024))
    assert curl("-T", str(warm), f"{nginx.url}/files/warm")[0] == 201
    before = memory_kib(pid, "VmHWM")

    big = tmp_path / "big"
    with big.open("wb") as handle:
        for _ in range(64):
            handle.write(os.urandom(1024 * 1024))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    status, headers, body = curl("-T", str(big), f"{nginx.url}/files/big.bin")
    assert status == 201, body
    assert headers["location"] == "https://files.example.com/files/big.bin"
    assert json.loads(body)["sha256"] == digest
    # Chunked (no Content-Length) streams through as well.
    with big.open("rb") as stdin:
        result = subprocess.run(
            [
                "curl",
                "-sS",
                "-H",
                bearer_line().strip(),
                "-T",
                "-",
                f"{nginx.url}/files/chunked.bin",
            ],
            stdin=stdin,
            capture_output=True,
            check=True,
        )
    assert json.loads(result.stdout)["sha256"] == digest

    growth_mib = (memory_kib(pid, "VmHWM") - before) / 1024
    assert growth_mib < 32, f"peak RSS grew {growth_mib:.1f} MiB for a 64 MiB upload"
    # nginx passed the bodies on as they came: it never spooled one to disk
    # (it says so in its log, at warn level, when it does).
    assert "buffered to a temporary file" not in nginx.error_log()
