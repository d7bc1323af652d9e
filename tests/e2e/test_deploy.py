"""The deployment recipes in deploy/ (README "Deployment"), each run as far
as this machine allows: Hypercorn with TLS and HTTP/2 from
deploy/hypercorn-tls.toml, the systemd unit through `systemd-analyze
verify`, and the Containerfile (built where a Docker daemon answers; else
its wheel served the way its CMD serves it). nginx in front:
tests/e2e/test_proxy.py runs deploy/nginx.conf."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from devtools import PROJECT_ROOT
from devtools.auth import TEST_ADMIN_KEY, bearer
from devtools.ports import free_port
from devtools.processes import die_with_parent, stop_process
from devtools.tls import self_signed_certificate

DEPLOY = PROJECT_ROOT / "deploy"
CHECKOUT_IN_RECIPES = "/srv/quart_app"


def app_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUART_APP_")}
    env.update(
        {
            "QUART_APP_STORAGE_DIR": str(root / "uploads"),
            "QUART_APP_INSTANCE_DIR": str(root / "instance"),
            "QUART_APP_ADMIN_KEY": TEST_ADMIN_KEY,
        }
    )
    return env


@contextmanager
def serving(command: list[str], cwd: Path, env: dict[str, str], probe: str) -> Iterator[Path]:
    """Run ``command`` until the block ends (SIGTERM; it must exit 0) once
    ``probe`` answers 200; yields its log file."""
    log_path = cwd / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(probe, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield log_path
    finally:
        stop_process(process, timeout=20)
    assert process.returncode == 0, log_path.read_text()[-3000:]


# -- TLS and HTTP/2 ---------------------------------------------------------------


def tls_config(tmp_path: Path, tls_port: int, plain_port: int) -> Path:
    """deploy/hypercorn-tls.toml with this test's certificate and ports."""
    cert, key = self_signed_certificate(tmp_path)
    text = (DEPLOY / "hypercorn-tls.toml").read_text()
    replacements = {
        r'^certfile = ".*"$': f'certfile = "{cert}"',
        r'^keyfile = ".*"$': f'keyfile = "{key}"',
        r"^bind = \[.*\]$": f'bind = ["127.0.0.1:{tls_port}"]',
        r"^insecure_bind = \[.*\]$": f'insecure_bind = ["127.0.0.1:{plain_port}"]',
    }
    for pattern, line in replacements.items():
        text, count = re.subn(pattern, line, text, flags=re.MULTILINE)
        assert count == 1, pattern
    path = tmp_path / "hypercorn-tls.toml"
    path.write_text(text)
    return path


def negotiated_protocol(port: int, context: ssl.SSLContext) -> str | None:
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.selected_alpn_protocol()


def test_tls_and_http2_from_the_tls_recipe(tmp_path: Path) -> None:
    tls_port, plain_port = free_port(), free_port()
    config = tls_config(tmp_path, tls_port, plain_port)
    cert = tmp_path / "cert.pem"
    env = {**app_env(tmp_path), "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", "quart_app", "serve", "--config", str(config)]
    with serving(command, tmp_path, env, f"http://127.0.0.1:{plain_port}/healthz") as log:
        context = ssl.create_default_context(cafile=cert)
        context.set_alpn_protocols(["h2", "http/1.1"])
        assert negotiated_protocol(tls_port, context) == "h2"
        data = os.urandom(3 * 1024 * 1024 + 7)
        base = f"https://127.0.0.1:{tls_port}"
        with httpx.Client(http2=True, verify=context, headers=bearer(), timeout=30) as client:
            put = client.put(f"{base}/files/over-h2", content=data)
            assert (put.status_code, put.http_version) == (201, "HTTP/2"), put.text
            assert put.json()["size"] == len(data)
            got = client.get(f"{base}/files/over-h2/content")
            assert (got.status_code, got.http_version) == (200, "HTTP/2")
            assert got.content == data
        # An HTTP/1.1-only client on the same TLS port, and the plain port.
        with httpx.Client(verify=context, headers=bearer()) as client:
            assert client.get(f"{base}/healthz").http_version == "HTTP/1.1"
        plain = httpx.get(f"http://127.0.0.1:{plain_port}/readyz")
        assert (plain.status_code, plain.http_version) == (200, "HTTP/1.1")
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    [started] = [x for x in lines if x["message"] == "worker started"]
    assert started["bind"] == [f"127.0.0.1:{tls_port}"]
    assert started["insecure_bind"] == [f"127.0.0.1:{plain_port}"]
    [starting] = [x for x in lines if x["logger"] == "quart_app.serve"]
    assert starting["tls"] is True
    running = {x["message"] for x in lines if x["logger"] == "hypercorn.error"}
    assert running == {
        f"Running on https://127.0.0.1:{tls_port} (CTRL + C to quit)",
        f"Running on http://127.0.0.1:{plain_port} (CTRL + C to quit)",
    }


def test_the_tls_recipe_is_hypercorn_toml_with_tls() -> None:
    """Everything but where it listens and its certificate is
    hypercorn.toml's, value for value, so the two cannot drift apart."""
    base = tomllib.loads((PROJECT_ROOT / "hypercorn.toml").read_text())
    tls = tomllib.loads((DEPLOY / "hypercorn-tls.toml").read_text())
    assert set(tls) - set(base) == {"certfile", "keyfile", "insecure_bind"}
    assert {k: v for k, v in tls.items() if k in base and k != "bind"} == {
        k: v for k, v in base.items() if k != "bind"
    }


# -- systemd ------------------------------------------------------------------------


def unit_for_this_checkout(tmp_path: Path) -> Path:
    unit = tmp_path / "quart_app.service"
    text = (DEPLOY / "quart_app.service").read_text()
    unit.write_text(text.replace(CHECKOUT_IN_RECIPES, str(PROJECT_ROOT)))
    return unit


def test_the_systemd_unit_verifies_and_starts_a_real_command(tmp_path: Path) -> None:
    unit = unit_for_this_checkout(tmp_path)
    service = {}
    section = ""
    for line in unit.read_text().splitlines():
        if line.startswith("["):
            section = line
        elif "=" in line and not line.startswith("#") and section == "[Service]":
            name, _, value = line.partition("=")
            service[name] = value
    # What keeps a stop graceful (hypercorn.toml's graceful_timeout is 30 s).
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    graceful = tomllib.loads((PROJECT_ROOT / "hypercorn.toml").read_text())["graceful_timeout"]
    assert int(service["TimeoutStopSec"]) > graceful
    assert service["RestartPreventExitStatus"] == "2"  # a bad setting: no restart loop
    # ExecStart is the serve command, and runs (--help: it would serve).
    argv = shlex.split(service["ExecStart"])
    assert argv[1:4] == ["-m", "quart_app", "serve"]
    assert Path(argv[0]).is_file(), argv[0]
    shown = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "--config" in shown.stdout, shown.stderr
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit was parsed, not verified")
    verified = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stderr.strip() == "", verified.stderr


# -- the container ---------------------------------------------------------------------


def containerfile_instruction(name: str) -> list[str]:
    """The exec-form (JSON) argument list of the Containerfile's ``name``."""
    text = (DEPLOY / "Containerfile").read_text().replace("\\\n", " ")
    match = re.search(rf"^{name} (?:.* )?(\[.*\])\s*$", text, flags=re.MULTILINE)
    assert match is not None, name
    argv: list[str] = json.loads(match.group(1))
    return argv


def docker_daemon() -> str | None:
    """Why a Docker build cannot run here, or None if it can."""
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not installed"
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    return None if info.returncode == 0 else info.stderr.strip().splitlines()[-1]


def test_the_container_image_builds(tmp_path: Path) -> None:
    why_not = docker_daemon()
    if why_not is not None:
        pytest.skip(f"cannot build the Containerfile here: {why_not}")
    tag = f"quart_app-test:{os.getpid()}"
    built = subprocess.run(
        ["docker", "build", "-f", str(DEPLOY / "Containerfile"), "-t", tag, str(PROJECT_ROOT)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    subprocess.run(["docker", "image", "rm", tag], capture_output=True, timeout=60)


def test_the_containers_wheel_serves_with_its_command(tmp_path: Path) -> None:
    """What the image would run, without Docker: the wheel built from the
    files the Containerfile copies, alone on the path (not this checkout),
    serving from a directory holding only hypercorn.toml with the image's
    CMD; its HEALTHCHECK command then passes."""
    context = tmp_path / "context"
    context.mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", context)
    shutil.copytree(
        PROJECT_ROOT / "quart_app", context / "quart_app",
        ignore=shutil.ignore_patterns("__pycache__"),
    )  # fmt: skip
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(context)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if built.returncode != 0 and "Could not find a version" in built.stdout + built.stderr:
        pytest.skip("no package index to fetch setuptools from, to build the wheel")
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [wheel] = tmp_path.glob("quart_app-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    home = tmp_path / "srv"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "hypercorn.toml", home)
    cmd = containerfile_instruction("CMD")
    assert cmd[:4] == ["python", "-m", "quart_app", "serve"]  # PID 1: docker stop's SIGTERM
    port = free_port()
    argv = [sys.executable, *cmd[1:]]
    argv[argv.index("--config") + 1] = str(home / "hypercorn.toml")
    argv[argv.index("--bind") + 1] = f"127.0.0.1:{port}"
    env = {**app_env(home), "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import quart_app; print(quart_app.__file__)"],
        env=env, cwd=home, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(site)), where.stdout
    with serving(argv, home, env, f"http://127.0.0.1:{port}/healthz"):
        # Migrations, the page's and /docs' assets came with the wheel.
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        docs = httpx.get(f"http://127.0.0.1:{port}/docs")
        asset = re.search(r'src="(static/[^"]+\.js)"', docs.text)
        assert asset is not None
        assert httpx.get(f"http://127.0.0.1:{port}/{asset.group(1)}").status_code == 200
        check = containerfile_instruction("HEALTHCHECK")
        assert check[0] == "python"
        probe = [sys.executable, *check[1:]]
        probe[-1] = probe[-1].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        assert subprocess.run(probe, env=env, timeout=30).returncode == 0
    assert (home / "instance").is_dir() and (home / "uploads").is_dir()
