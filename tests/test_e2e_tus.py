"""tus end to end: a real Hypercorn and the real clients (tuspy's sync and
async uploaders; tus-js-client run by node, installed from npm here)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from tusclient import client as tus

from .server import PROJECT_ROOT, RunningServer

MiB = 1024 * 1024
# tuspy leaves its file handles to the garbage collector, and aiohttp warns
# that tuspy sends raw bytes: their ResourceWarnings are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def make_file(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        remaining = size
        while remaining:
            block = os.urandom(min(remaining, 4 * MiB))
            handle.write(block)
            remaining -= len(block)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def stored_sha256(server: RunningServer, upload_url: str) -> str:
    """The sha256 of the bytes the server serves for the completed upload."""
    file_id = upload_url.rstrip("/").rsplit("/", 1)[1]
    digest = hashlib.sha256()
    with httpx.stream("GET", f"{server.url}/files/{file_id}/content", timeout=60) as response:
        assert response.status_code == 200
        for block in response.iter_bytes():
            digest.update(block)
    return digest.hexdigest()


def sync_upload(server: RunningServer, path: Path, chunk: int) -> str:
    uploader = tus.TusClient(f"{server.url}/uploads").uploader(
        str(path), chunk_size=chunk, upload_checksum=True, metadata={"filename": path.name}
    )
    uploader.upload()
    assert uploader.url is not None
    return uploader.url


def async_upload(server: RunningServer, path: Path, chunk: int) -> str:
    async def run() -> str:
        uploader = tus.TusClient(f"{server.url}/uploads").async_uploader(
            str(path), chunk_size=chunk, upload_checksum=True, metadata={"filename": path.name}
        )
        await uploader.upload()
        assert uploader.url is not None
        return uploader.url

    return asyncio.run(run())


UPLOADERS: dict[str, Callable[[RunningServer, Path, int], str]] = {
    "sync": sync_upload,
    "async": async_upload,
}


@pytest.mark.parametrize("size", [0, 5000, 100 * MiB], ids=["empty", "small", "100MiB"])
@pytest.mark.parametrize("kind", sorted(UPLOADERS))
def test_tuspy_uploads_end_with_identical_bytes(
    server: RunningServer, tmp_path: Path, kind: str, size: int
) -> None:
    path = make_file(tmp_path / f"{kind}-{size}.bin", size)
    url = UPLOADERS[kind](server, path, 8 * MiB)
    assert stored_sha256(server, url) == sha256_of(path)
    info = httpx.get(url, headers={"Tus-Resumable": "1.0.0"}).json()
    assert info["completed"] and info["offset"] == size


def test_tuspy_resumes_after_an_interruption(server: RunningServer, tmp_path: Path) -> None:
    path = make_file(tmp_path / "resume.bin", 20 * MiB)
    client = tus.TusClient(f"{server.url}/uploads")
    first = client.uploader(str(path), chunk_size=4 * MiB, upload_checksum=True)
    first.upload(stop_at=9 * MiB)
    assert first.url is not None
    offset = int(httpx.head(first.url, headers={"Tus-Resumable": "1.0.0"}).headers["Upload-Offset"])
    assert 0 < offset < 20 * MiB
    second = client.uploader(str(path), chunk_size=4 * MiB, upload_checksum=True, url=first.url)
    assert second.offset == offset
    second.upload()
    assert stored_sha256(server, first.url) == sha256_of(path)


def test_tuspy_resumes_after_a_server_restart(server: RunningServer, tmp_path: Path) -> None:
    path = make_file(tmp_path / "restart.bin", 20 * MiB)
    client = tus.TusClient(f"{server.url}/uploads")
    first = client.uploader(str(path), chunk_size=4 * MiB, upload_checksum=True)
    first.upload(stop_at=9 * MiB)
    assert first.url is not None
    server.stop()
    server.start()  # same port, database and storage directory

    async def finish() -> None:
        uploader = tus.TusClient(f"{server.url}/uploads").async_uploader(
            str(path), chunk_size=4 * MiB, upload_checksum=True, url=first.url
        )
        assert uploader.offset >= 8 * MiB
        await uploader.upload()

    asyncio.run(finish())
    assert stored_sha256(server, first.url) == sha256_of(path)


def test_a_patch_cut_off_keeps_what_arrived(server: RunningServer) -> None:
    created = httpx.post(
        f"{server.url}/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(4 * MiB)}
    )
    url = created.headers["Location"]
    path = url.removeprefix(server.url)
    data = os.urandom(4 * MiB)
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + data[: 3 * MiB])
        time.sleep(0.3)
    server.wait_for_access(lambda x: x["method"] == "PATCH")
    offset = int(httpx.head(url, headers={"Tus-Resumable": "1.0.0"}).headers["Upload-Offset"])
    assert offset == 3 * MiB
    rest = httpx.patch(
        url,
        content=data[offset:],
        headers={"Tus-Resumable": "1.0.0", "Upload-Offset": str(offset),
                 "Content-Type": "application/offset+octet-stream"},
    )  # fmt: skip
    assert rest.status_code == 204
    assert stored_sha256(server, url) == hashlib.sha256(data).hexdigest()


JS_UPLOAD = """
const tus = require('tus-js-client');
const fs = require('fs');
const [endpoint, path, chunkSize] = process.argv.slice(2);
const upload = new tus.Upload(fs.readFileSync(path), {
  endpoint,
  chunkSize: Number(chunkSize),
  retryDelays: null,
  metadata: { filename: 'from-js.bin', filetype: 'application/octet-stream' },
  onError: (error) => { console.error(String(error)); process.exit(1); },
  onSuccess: () => { console.log(JSON.stringify({ url: upload.url })); },
});
upload.start();
"""


@pytest.fixture(scope="session")
def tus_js_client() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: tus-js-client cannot run here")
    prefix = PROJECT_ROOT / ".venv" / "js"
    if not (prefix / "node_modules" / "tus-js-client").exists():
        subprocess.run(
            ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
             "--loglevel=error", "tus-js-client@4"],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    script = prefix / "upload.js"
    script.write_text(JS_UPLOAD)
    return script


@pytest.mark.parametrize("size", [0, 70_000, 20 * MiB], ids=["empty", "small", "20MiB"])
def test_tus_js_client_uploads(
    server: RunningServer, tmp_path: Path, tus_js_client: Path, size: int
) -> None:
    path = make_file(tmp_path / "js.bin", size)
    result = subprocess.run(
        ["node", str(tus_js_client), f"{server.url}/uploads", str(path), str(5 * MiB)],
        capture_output=True, text=True, timeout=120, cwd=tus_js_client.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    url = json.loads(result.stdout.strip().splitlines()[-1])["url"]
    assert stored_sha256(server, url) == sha256_of(path)
    file_id = url.rsplit("/", 1)[1]
    assert httpx.get(f"{server.url}/files/{file_id}").json()["filename"] == "from-js.bin"
