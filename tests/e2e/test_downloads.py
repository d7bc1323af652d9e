"""Downloads against a real Hypercorn while the same files are replaced and
deleted: a 200 delivers every byte it announced, of a version that existed."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devtools.auth import bearer
from devtools.server import start_server

DOWNLOADS = 1000
READERS = 6
FILE_IDS = ("f0", "f1", "f2")
CHUNK = 64 * 1024


@dataclass
class Versions:
    """sha256 -> size of every body a writer has sent (recorded before the
    PUT goes out: a reader may see it as soon as it commits)."""

    sizes: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new(self) -> bytes:
        # Fresh bytes every time, so each replace retires the previous blob.
        data = os.urandom(CHUNK * (1 + int.from_bytes(os.urandom(1)) % 16))
        with self.lock:
            self.sizes[hashlib.sha256(data).hexdigest()] = len(data)
        return data


def write_until(url: str, versions: Versions, stop: threading.Event, deleting: bool) -> None:
    with httpx.Client(base_url=url, headers=bearer(), timeout=30) as client:
        turn = 0
        while not stop.is_set():
            file_id = FILE_IDS[turn % len(FILE_IDS)]
            turn += 1
            if deleting:
                client.delete(f"/files/{file_id}")
            answer = client.put(f"/files/{file_id}", content=versions.new())
            assert answer.status_code in (200, 201), answer.text


def read(client: httpx.Client, file_id: str, versions: Versions) -> str:
    """Download once; what came of it ("200", "404", ...), or a failure."""
    try:
        with client.stream("GET", f"/files/{file_id}/content") as response:
            body = response.read()
    except httpx.HTTPError as error:  # a cut connection after the headers
        return f"cut off: {type(error).__name__}"
    if response.status_code != 200:
        return str(response.status_code)
    sha = hashlib.sha256(body).hexdigest()
    if int(response.headers["Content-Length"]) != len(body):
        return f"short: {len(body)} of {response.headers['Content-Length']}"
    if response.headers["ETag"] != f'"{sha}"' or versions.sizes.get(sha) != len(body):
        return "bytes of no version that existed"
    return "200"


def test_downloads_survive_concurrent_replaces_and_deletes(tmp_path: Path) -> None:
    server = start_server(tmp_path / "s")
    versions = Versions()
    try:
        with httpx.Client(base_url=server.url, headers=bearer()) as client:
            for file_id in FILE_IDS:
                assert client.put(f"/files/{file_id}", content=versions.new()).status_code == 201
        stop = threading.Event()
        writers = [
            threading.Thread(target=write_until, args=(server.url, versions, stop, deleting))
            for deleting in (False, True)
        ]
        outcomes: Counter[str] = Counter()
        counted = threading.Lock()

        def reader(index: int) -> None:
            with httpx.Client(base_url=server.url, headers=bearer(), timeout=30) as client:
                for n in range(DOWNLOADS // READERS + (index < DOWNLOADS % READERS)):
                    outcome = read(client, FILE_IDS[(n + index) % len(FILE_IDS)], versions)
                    with counted:
                        outcomes[outcome] += 1

        readers = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
        for thread in writers + readers:
            thread.start()
        for thread in readers:
            thread.join()
        stop.set()
        for thread in writers:
            thread.join()
    finally:
        server.stop()
    assert sum(outcomes.values()) == DOWNLOADS
    # 404: the reader came while the file was deleted. Anything else fails.
    assert set(outcomes) <= {"200", "404"}, outcomes
    assert outcomes["200"] > DOWNLOADS // 2, outcomes
    assert "Traceback" not in server.log()
