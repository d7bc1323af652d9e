"""tus end to end: a real Hypercorn and the real clients (tuspy's sync and
async uploaders; tus-js-client run by node, installed from npm here)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from tusclient import client as tus

from devtools import PROJECT_ROOT
from devtools.auth import TEST_ADMIN_KEY, bearer, create_user_key
from devtools.files import sha256_of
from devtools.server import RunningServer, start_server
from devtools.stored import assert_server_holds, server_holds

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


def stored_sha256(server: RunningServer, upload_url: str, key: str = TEST_ADMIN_KEY) -> str:
    """The sha256 of the bytes the server serves for the completed upload."""
    file_id = upload_url.rstrip("/").rsplit("/", 1)[1]
    digest = hashlib.sha256()
    url = f"{server.url}/files/{file_id}/content"
    with httpx.stream("GET", url, headers=bearer(key), timeout=60) as response:
        assert response.status_code == 200
        for block in response.iter_bytes():
            digest.update(block)
    return digest.hexdigest()


def sync_upload(server: RunningServer, path: Path, chunk: int) -> str:
    uploader = tus.TusClient(f"{server.url}/uploads", headers=bearer()).uploader(
        str(path), chunk_size=chunk, upload_checksum=True, metadata={"filename": path.name}
    )
    uploader.upload()
    assert uploader.url is not None
    return uploader.url


def async_upload(server: RunningServer, path: Path, chunk: int) -> str:
    async def run() -> str:
        uploader = tus.TusClient(f"{server.url}/uploads", headers=bearer()).async_uploader(
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
    info = httpx.get(url, headers=TUS).json()
    assert info["completed"] and info["offset"] == size


def start_and_stop_at_9_mib(server: RunningServer, path: Path) -> str:
    """A 20 MiB tuspy upload in 4 MiB chunks, stopped after 9 MiB: its URL."""
    make_file(path, 20 * MiB)
    first = tus.TusClient(f"{server.url}/uploads", headers=bearer()).uploader(
        str(path), chunk_size=4 * MiB, upload_checksum=True
    )
    first.upload(stop_at=9 * MiB)
    assert first.url is not None
    return first.url


def test_tuspy_resumes_after_an_interruption(server: RunningServer, tmp_path: Path) -> None:
    path = tmp_path / "resume.bin"
    url = start_and_stop_at_9_mib(server, path)
    offset = upload_offset(url)
    assert 0 < offset < 20 * MiB
    second = tus.TusClient(f"{server.url}/uploads", headers=bearer()).uploader(
        str(path), chunk_size=4 * MiB, upload_checksum=True, url=url
    )
    assert second.offset == offset
    second.upload()
    assert stored_sha256(server, url) == sha256_of(path)


def test_tuspy_resumes_after_a_server_restart(server: RunningServer, tmp_path: Path) -> None:
    path = tmp_path / "restart.bin"
    url = start_and_stop_at_9_mib(server, path)
    server.stop()
    server.start()  # same port, database and storage directory

    async def finish() -> None:
        uploader = tus.TusClient(f"{server.url}/uploads", headers=bearer()).async_uploader(
            str(path), chunk_size=4 * MiB, upload_checksum=True, url=url
        )
        assert uploader.offset >= 8 * MiB
        await uploader.upload()

    asyncio.run(finish())
    assert stored_sha256(server, url) == sha256_of(path)


TUS = {"Tus-Resumable": "1.0.0", **bearer()}


def patch_and_hang_up(
    server: RunningServer, path: str, offset: int, chunk: bytes, sent: int, checksum: bool
) -> None:
    """PATCH ``chunk`` at ``offset`` but send only its first ``sent`` bytes,
    then close the connection; wait until the server is done with it."""
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        f"Authorization: Bearer {TEST_ADMIN_KEY}\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
        f"Content-Length: {len(chunk)}\r\n"
    )
    if checksum:
        digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
        head += f"Upload-Checksum: sha256 {digest}\r\n"
    patches = sum(line["method"] == "PATCH" for line in server.access_lines())
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall((head + "\r\n").encode() + chunk[:sent])
        time.sleep(0.2)
    server.wait_for_access(lambda x: x["method"] == "PATCH", count=patches + 1)


def upload_offset(url: str) -> int:
    return int(httpx.head(url, headers=TUS).headers["Upload-Offset"])


@pytest.mark.parametrize("cut", [0, 1, MiB + 7, 2 * MiB, 4 * MiB - 1])
def test_a_patch_cut_off_keeps_exactly_what_arrived(server: RunningServer, cut: int) -> None:
    """Two PATCHes cut off (at ``cut``, then half-way through the rest) keep
    every byte that arrived and nothing else; the upload then completes with
    identical bytes, and no temp file is left."""
    data = os.urandom(4 * MiB)
    url = httpx.post(
        f"{server.url}/uploads", headers={**TUS, "Upload-Length": str(len(data))}
    ).headers["Location"]
    path = url.removeprefix(server.url)
    patch_and_hang_up(server, path, 0, data, cut, checksum=False)
    assert upload_offset(url) == cut
    second = cut + (len(data) - cut) // 2
    patch_and_hang_up(server, path, cut, data[cut:], second - cut, checksum=False)
    assert upload_offset(url) == second
    assert (server.storage_dir / "partial" / path.rsplit("/", 1)[1]).stat().st_size == second
    assert list((server.storage_dir / "tmp").iterdir()) == []
    rest = httpx.patch(
        url,
        content=data[second:],
        headers={**TUS, "Upload-Offset": str(second),
                 "Content-Type": "application/offset+octet-stream"},
    )  # fmt: skip
    assert rest.status_code == 204
    assert stored_sha256(server, url) == hashlib.sha256(data).hexdigest()


def test_a_checksummed_patch_cut_off_keeps_nothing(server: RunningServer) -> None:
    """With Upload-Checksum the chunk cannot be verified unless whole, so a
    cut-off PATCH keeps none of it (the offset stays where it was)."""
    data = os.urandom(4 * MiB)
    url = httpx.post(
        f"{server.url}/uploads", headers={**TUS, "Upload-Length": str(len(data))}
    ).headers["Location"]
    path = url.removeprefix(server.url)
    for sent in (1, 2 * MiB, len(data) - 1):
        patch_and_hang_up(server, path, 0, data, sent, checksum=True)
        assert upload_offset(url) == 0
    assert list((server.storage_dir / "tmp").iterdir()) == []


JS_UPLOAD = """
const tus = require('tus-js-client');
const fs = require('fs');
const [endpoint, path, chunkSize, key] = process.argv.slice(2);
const upload = new tus.Upload(fs.readFileSync(path), {
  endpoint,
  chunkSize: Number(chunkSize),
  retryDelays: null,
  headers: key ? { Authorization: `Bearer ${key}` } : {},
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


def run_tus_js_client(
    script: Path, endpoint: str, path: Path, key: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(script), endpoint, str(path), str(5 * MiB), key],
        capture_output=True, text=True, timeout=120, cwd=script.parent,
    )  # fmt: skip


@pytest.mark.parametrize("size", [0, 70_000, 20 * MiB], ids=["empty", "small", "20MiB"])
def test_tus_js_client_uploads(
    server: RunningServer, tmp_path: Path, tus_js_client: Path, size: int
) -> None:
    """tus-js-client, unmodified, with a user's own key in its ``headers``
    option: the upload is that user's."""
    user_id, key = create_user_key(server.url)
    path = make_file(tmp_path / "js.bin", size)
    result = run_tus_js_client(tus_js_client, f"{server.url}/uploads", path, key)
    assert result.returncode == 0, result.stderr
    url = json.loads(result.stdout.strip().splitlines()[-1])["url"]
    assert stored_sha256(server, url, key) == sha256_of(path)
    file_id = url.rsplit("/", 1)[1]
    info = httpx.get(f"{server.url}/files/{file_id}", headers=bearer(key)).json()
    assert info["filename"] == "from-js.bin"
    with sqlite3.connect(f"file:{server.database_path}?mode=ro", uri=True) as db:
        owners = db.execute("SELECT owner_id FROM files WHERE id = ?", (file_id,)).fetchall()
    assert owners == [(user_id,)]


def test_tus_js_client_without_a_key_is_refused(
    server: RunningServer, tmp_path: Path, tus_js_client: Path
) -> None:
    before = server_holds(server)
    path = make_file(tmp_path / "js.bin", 70_000)
    result = run_tus_js_client(tus_js_client, f"{server.url}/uploads", path, "")
    assert result.returncode != 0
    assert "401" in result.stderr
    assert_server_holds(server, before)


def test_a_browser_preflight_for_a_tus_upload_allows_authorization(tmp_path: Path) -> None:
    """What a page running tus-js-client makes its browser ask first (the
    preflight carries no key), then the upload with the key."""
    origin = "https://app.example"
    server = start_server(tmp_path / "server", {"QUART_APP_CORS_ORIGINS": origin})
    try:
        preflight = httpx.options(
            f"{server.url}/uploads",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, tus-resumable, upload-length",
            },
        )
        assert preflight.status_code in (200, 204)
        assert preflight.headers["Access-Control-Allow-Origin"] == origin
        allowed = {
            h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")
        }
        assert {"authorization", "tus-resumable", "upload-length"} <= allowed
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        created = httpx.post(
            f"{server.url}/uploads",
            headers={"Origin": origin, **TUS, "Upload-Length": "5"},
        )
        assert created.status_code == 201
        assert created.headers["Access-Control-Allow-Origin"] == origin
        assert "Location" in created.headers["Access-Control-Expose-Headers"]
    finally:
        server.stop()
