"""``backup`` under upload load, ``restore`` into a fresh directory: the
restored instance checks clean and serves every file the backup's database
lists, byte for byte (README "Backup and restore")."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import random
import secrets
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from devtools.auth import bearer
from devtools.form_data import multipart, multipart_headers, part
from devtools.server import prepare_server, start_server

# Blobs up to 64 KiB are kept in their rows (the default), larger ones in files.
INLINE = {"QUART_APP_INLINE_BLOB_BYTES": "65536"}
SIZES = (300, 20_000, 60_000, 150_000, 700_000)
TUS = {"Tus-Resumable": "1.0.0"}


@dataclass
class Load:
    """Uploads by multipart, PUT (new ids and replacements) and tus, and
    deletes, from several clients at once, until stopped."""

    url: str
    sent: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes
    ids: list[str] = field(default_factory=list)
    done: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def body(self) -> bytes:
        data = os.urandom(random.choice(SIZES))
        self.sent[hashlib.sha256(data).hexdigest()] = data
        return data

    def created(self, answer: httpx.Response, *expected: int) -> None:
        if answer.status_code not in expected:
            self.errors.append(f"{answer.request.method} {answer.status_code} {answer.text}")
            return
        self.done += 1

    async def multipart_upload(self, client: httpx.AsyncClient) -> None:
        parts = [part("file", self.body(), filename=f"f{i}.bin") for i in range(2)]
        answer = await client.post("/files", content=multipart(*parts), headers=multipart_headers())
        self.created(answer, 201)
        if answer.status_code == 201:
            self.ids += [f["id"] for f in answer.json()["files"]]

    async def put(self, client: httpx.AsyncClient) -> None:
        named = [file_id for file_id in self.ids if file_id.startswith("put-")]
        replace = named and random.random() < 0.3
        file_id = random.choice(named) if replace else f"put-{secrets.token_hex(6)}"
        answer = await client.put(f"/files/{file_id}", content=self.body())
        self.created(answer, 200, 201, 404)  # 404: deleted meanwhile by another client
        if answer.status_code == 201:
            self.ids.append(file_id)

    async def tus(self, client: httpx.AsyncClient) -> None:
        data = self.body()
        name = base64.b64encode(b"tus.bin").decode()
        created = await client.post(
            "/uploads",
            headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": f"filename {name}"},
        )
        self.created(created, 201)
        if created.status_code != 201:
            return
        location = created.headers["location"]
        step = max(1, len(data) // 3)
        for offset in range(0, len(data), step):
            patched = await client.patch(
                location,
                content=data[offset : offset + step],
                headers={
                    **TUS,
                    "Upload-Offset": str(offset),
                    "Content-Type": "application/offset+octet-stream",
                },
            )
            self.created(patched, 204)
        self.ids.append(location.rstrip("/").rsplit("/", 1)[1])

    async def delete(self, client: httpx.AsyncClient) -> None:
        if len(self.ids) > 10:
            file_id = self.ids.pop(random.randrange(len(self.ids)))
            self.created(await client.delete(f"/files/{file_id}"), 204, 404)

    async def client(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, headers=bearer(), timeout=60) as client:
            while not self.stop.is_set():
                operation = random.choice(
                    (self.multipart_upload, self.put, self.put, self.tus, self.delete)
                )
                await operation(client)

    async def run(self, clients: int) -> None:
        await asyncio.gather(*(self.client() for _ in range(clients)))


@contextlib.contextmanager
def running(load: Load, clients: int = 4) -> Iterator[Load]:
    thread = threading.Thread(target=asyncio.run, args=(load.run(clients),))
    thread.start()
    try:
        yield load
    finally:
        load.stop.set()
        thread.join(timeout=60)


def command(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quart_app", *argv],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def wait_for(load: Load, operations: int) -> None:
    deadline = time.monotonic() + 60
    while load.done < operations and not load.errors:
        assert time.monotonic() < deadline, "the load made too little progress"
        time.sleep(0.05)


def restore_and_serve(backup: Path, root: Path, load: Load) -> int:
    """Restore into ``root``, check it, serve it, download every file the
    backup's database lists; how many there were."""
    restored = prepare_server(root, INLINE)
    result = command(restored.env, "restore", str(backup))
    assert result.returncode == 0, result.stderr
    result = command(restored.env, "check")
    assert result.returncode == 0 and "all is well" in result.stdout, result.stdout
    with contextlib.closing(sqlite3.connect(backup / "quart_app.sqlite3")) as database:
        files = list(database.execute("SELECT id, sha256, size FROM files"))
    restored.start()
    try:
        with httpx.Client(base_url=restored.url, headers=bearer(), timeout=60) as client:
            for file_id, sha256, size in files:
                answer = client.get(f"/files/{file_id}/content")
                assert answer.status_code == 200, (file_id, answer.text)
                assert hashlib.sha256(answer.content).hexdigest() == sha256
                assert answer.content == load.sent[sha256] and len(answer.content) == size
    finally:
        restored.stop()
    return len(files)


def other_filesystem(tmp_path: Path) -> Path | None:
    """A directory on another filesystem than ``tmp_path``: blobs are copied
    there, not linked."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        return None
    return shm / f"quart_app-backup-{secrets.token_hex(4)}"


def test_a_backup_taken_under_load_restores_every_file_it_lists(tmp_path: Path) -> None:
    server = start_server(tmp_path / "live", INLINE)
    elsewhere = other_filesystem(tmp_path)
    try:
        with running(Load(server.url)) as load:
            wait_for(load, 30)
            linked = command(server.env, "backup", str(tmp_path / "backup"))
            before_second = load.done
            copied = command(server.env, "backup", str(elsewhere)) if elsewhere else None
            wait_for(load, before_second + 10)  # the load went on past the backups
        assert load.errors == []
        assert linked.returncode == 0, linked.stderr
        assert "hard-linked" in linked.stdout
        with contextlib.closing(sqlite3.connect(tmp_path / "backup" / "quart_app.sqlite3")) as db:
            in_rows, in_files, unfinished = db.execute(
                "SELECT (SELECT count(*) FROM blobs WHERE content IS NOT NULL),"
                " (SELECT count(*) FROM blobs WHERE content IS NULL),"
                " (SELECT count(*) FROM uploads WHERE completed_at IS NULL)"
            ).fetchone()
        assert in_rows > 0 and in_files > 0 and unfinished == 0
        counted = restore_and_serve(tmp_path / "backup", tmp_path / "restored", load)
        assert counted >= 5  # deletes take some of what was uploaded
        if elsewhere is not None and copied is not None:
            assert copied.returncode == 0, copied.stderr
            assert "0 hard-linked, rest copied" in copied.stdout
            restore_and_serve(elsewhere, tmp_path / "restored-copy", load)
    finally:
        server.stop()
        if elsewhere is not None:
            shutil.rmtree(elsewhere, ignore_errors=True)


@pytest.mark.parametrize("verb", ["backup", "restore"])
def test_the_commands_refuse_with_exit_status_2(tmp_path: Path, verb: str) -> None:
    """Across a real process boundary: the exit status and the one line."""
    server = prepare_server(tmp_path / "live")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    result = command(server.env, verb, str(tmp_path / "taken"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{verb}: refused: ")
    assert len(result.stderr.splitlines()) == 1
