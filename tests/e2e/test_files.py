"""Files end to end: a real Hypercorn, curl, raw sockets, a real tiny disk."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.auth import bearer, bearer_line
from devtools.curl import curl
from devtools.form_data import BOUNDARY, multipart, part
from devtools.processes import tmpfs
from devtools.server import RunningServer, memory_kib, start_server, worker_pid
from devtools.stored import rows, temp_files


def test_the_readme_curl_commands(server: RunningServer, tmp_path: Path) -> None:
    sample = tmp_path / "x.txt"
    sample.write_bytes(os.urandom(5000))
    digest = hashlib.sha256(sample.read_bytes()).hexdigest()

    status, headers, body = curl("-F", f"file=@{sample}", f"{server.url}/files")
    assert status == 201 and json.loads(body)["sha256"] == digest
    assert headers["location"].startswith(f"{server.url}/files/")

    status, headers, body = curl("-T", str(sample), f"{server.url}/files/x.txt")
    assert status == 201 and headers["location"] == f"{server.url}/files/x.txt"

    status, headers, body = curl(
        "--data-binary",
        f"@{sample}",
        "-H",
        'Content-Disposition: attachment; filename="x.txt"',
        f"{server.url}/files",
    )
    assert status == 201 and json.loads(body)["filename"] == "x.txt"

    status, headers, body = curl("-r", "0-99", f"{server.url}/files/x.txt/content")
    assert status == 206 and headers["content-range"] == "bytes 0-99/5000"

    download = tmp_path / "download"
    download.mkdir()
    subprocess.run(
        [
            "curl",
            "-sS",
            "-O",
            "-J",
            "-H",
            bearer_line().strip(),
            f"{server.url}/files/x.txt/content",
        ],
        cwd=download,
        check=True,
    )
    assert (download / "x.txt").read_bytes() == sample.read_bytes()


def test_chunked_upload_over_the_limit_is_413_and_leaves_nothing(tmp_path: Path) -> None:
    server = start_server(tmp_path / "s", {"QUART_APP_MAX_UPLOAD_BYTES": str(1024 * 1024)})
    try:
        big = tmp_path / "big"
        big.write_bytes(b"x" * (5 * 1024 * 1024))
        with big.open("rb") as stdin:
            result = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "-T",
                    "-",
                    "-H",
                    "Transfer-Encoding: chunked",
                    "-H",
                    bearer_line().strip(),
                    "-w",
                    "\n%{http_code}",
                    f"{server.url}/files/big",
                ],
                stdin=stdin,
                capture_output=True,
                text=True,
            )
        *body, status = result.stdout.rsplit("\n", 1)
        assert status == "413", result
        assert json.loads(body[0])["status"] == 413
        assert rows(server, "files") == 0
        assert temp_files(server.storage_dir) == []
    finally:
        server.stop()


def send_and_hang_up(server: RunningServer, head: bytes, body: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + body)
        time.sleep(0.2)


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.5, 0.99, 1.0])
def test_a_client_that_disconnects_mid_upload_leaves_nothing(
    server: RunningServer, fraction: float
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    form = multipart(part("file", data, "a.bin"))
    form_without_end = form[: -len(f"--{BOUNDARY}--\r\n")]
    uploads = {
        "multipart": (
            f"POST /files HTTP/1.1\r\nHost: x\r\n{bearer_line()}Content-Length: {len(form)}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n",
            form_without_end,
        ),
        "put": (
            f"PUT /files/cut HTTP/1.1\r\nHost: x\r\n{bearer_line()}"
            f"Content-Length: {len(data) + 1}\r\n\r\n",
            data,
        ),
    }
    for head, body in uploads.values():
        send_and_hang_up(server, head.encode(), body[: int(len(body) * fraction)])
    server.wait_for_access(lambda x: x["method"] == "POST")
    server.wait_for_access(lambda x: x["method"] == "PUT")
    assert rows(server, "files") == 0
    assert rows(server, "blobs") == 0
    assert temp_files(server.storage_dir) == []
    assert not [p for p in (server.storage_dir / "blobs").rglob("*") if p.is_file()]
    assert curl(f"{server.url}/healthz")[0] == 200


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tiny"
    with tmpfs(mount_point, "2m") as refused:
        if refused is not None:
            pytest.skip(f"cannot mount a tmpfs here: {refused}")
        yield mount_point


def test_a_real_full_disk_is_507_and_leaves_nothing(tmp_path: Path, tiny_disk: Path) -> None:
    server = start_server(tmp_path / "s", {"QUART_APP_STORAGE_DIR": str(tiny_disk / "uploads")})
    try:
        upload = tmp_path / "five-mib"
        upload.write_bytes(os.urandom(5 * 1024 * 1024))
        status, headers, _ = curl("-F", f"file=@{upload}", f"{server.url}/files")
        assert status == 507
        assert headers["content-type"] == "application/problem+json"
        assert rows(server, "files") == 0
        assert temp_files(server.storage_dir) == []
        small = tmp_path / "small"
        small.write_bytes(b"still works")
        assert curl("-F", f"file=@{small}", f"{server.url}/files")[0] == 201
    finally:
        server.stop()


def test_memory_does_not_grow_with_the_upload(server: RunningServer, tmp_path: Path) -> None:
    pid = worker_pid(server)
    small = tmp_path / "small"
    small.write_bytes(os.urandom(1024 * 1024))
    assert curl("-T", str(small), f"{server.url}/files/warm")[0] == 201
    before = memory_kib(pid, "VmHWM")
    big = tmp_path / "big"
    with big.open("wb") as handle:
        handle.truncate(256 * 1024 * 1024)  # sparse: reads as zeros, costs no disk
    for form in (
        ["-T", str(big), f"{server.url}/files/big"],
        ["-F", f"file=@{big}", f"{server.url}/files"],
    ):
        status, _, body = curl(*form)
        assert status in (200, 201), body
    tus = {"Tus-Resumable": "1.0.0", **bearer()}
    created = httpx.post(
        f"{server.url}/uploads", headers={**tus, "Upload-Length": str(256 * 1024 * 1024)}
    )
    with big.open("rb") as stream:
        patched = httpx.patch(
            created.headers["Location"],
            content=stream,
            headers={
                **tus,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
            timeout=120,
        )
    assert patched.status_code == 204
    growth_mib = (memory_kib(pid, "VmHWM") - before) / 1024
    # Stock Quart would hold the 256 MiB body; the bound is the body buffer,
    # Hypercorn's queue and two write batches.
    assert growth_mib < 32, f"peak RSS grew {growth_mib:.1f} MiB for a 256 MiB upload"


@pytest.mark.parametrize(
    ("method", "path", "status", "chunked"),
    [
        ("POST", "/filez", 404, False),
        ("POST", "/filez", 404, True),
        ("PATCH", "/files", 405, False),
        ("PATCH", "/files", 405, True),
    ],
)
def test_a_5_mib_body_to_a_wrong_route_or_method_is_404_or_405_promptly(
    server: RunningServer, tmp_path: Path, method: str, path: str, status: int, chunked: bool
) -> None:
    # Over the 1 MiB JSON limit that used to apply when routing failed: a
    # declared length got a 413 at once; a chunked body got a 413 or the
    # 404/405 depending on how much had arrived before the hook ran.
    big = tmp_path / "big"
    big.write_bytes(os.urandom(5 * 1024 * 1024))
    framing = ["-H", "Transfer-Encoding: chunked"] if chunked else []
    started = time.monotonic()
    code, headers, body = curl(
        "-X", method, "--data-binary", f"@{big}", *framing, f"{server.url}{path}"
    )
    assert time.monotonic() - started < 5
    assert (code, headers["content-type"]) == (status, "application/problem+json")
    assert json.loads(body)["status"] == status
    if status == 405:
        assert "POST" in headers["allow"] and method not in headers["allow"]
    # The server is fine afterwards and stored nothing.
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    assert rows(server, "files") == 0
    assert temp_files(server.storage_dir) == []
