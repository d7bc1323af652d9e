"""One function per measurement; each returns plain numbers."""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from devtools.files import MiB, sha256_of

from .servers import Server

LUA = Path(__file__).parent / "lua"


def warm_disk(directory: Path, size: int) -> None:
    """Write and delete about 3x the file size: on these virtual disks a write
    to never-used blocks is several times slower than to recently freed ones,
    and every figure should see the same kind of blocks."""
    target = directory / "warm.bin"
    for _ in range(3):
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={size // MiB}",
             "conv=fdatasync", "status=none"],
            check=True,
        )  # fmt: skip
        target.unlink()


def disk_mb_s(directory: Path, size: int) -> float:
    target = directory / "dd.bin"
    result = subprocess.run(
        ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={size // MiB}",
         "conv=fdatasync"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    target.unlink()
    match = re.search(r"copied, ([\d.]+) s", result.stderr)
    assert match, result.stderr
    return size / float(match.group(1)) / 1e6


@dataclass
class Upload:
    mb_s: float
    answer: dict[str, object]
    # CPU seconds the server's processes and curl spent, and the wall time:
    # (server + client) / wall near the machine's core count means the
    # upload was bound by CPU, not by the disk.
    server_cpu_s: float
    client_cpu_s: float
    wall_s: float


def curl_upload(server: Server, path: Path, how: str) -> Upload:
    """One upload with curl (-F multipart or -T PUT)."""
    server_cpu = server.cpu_seconds()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    mb_s, answer = _curl_upload(server, path, how)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    return Upload(mb_s, answer, server.cpu_seconds() - server_cpu, client, wall)


def curl_headers(server: Server) -> list[str]:
    return [arg for name, value in server.headers.items() for arg in ("-H", f"{name}: {value}")]


def _curl_upload(server: Server, path: Path, how: str) -> tuple[float, dict[str, object]]:
    """MB/s of one upload with curl (-F multipart or -T PUT), and the JSON answer."""
    url = f"{server.url}/files" if how == "multipart" else f"{server.url}/files/{path.name}"
    form = ["-F", f"file=@{path}"] if how == "multipart" else ["-T", str(path)]
    result = subprocess.run(
        ["curl", "-sS", "-o", "-", "-w", "\n%{http_code} %{speed_upload}", *curl_headers(server),
         *form, url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    body, _, tail = result.stdout.rpartition("\n")
    status, speed = tail.split()
    if status not in ("200", "201"):
        raise RuntimeError(f"{server.name} answered {status}: {body[:300]}")
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    return float(speed) / 1e6, answer


def curl_download(server: Server, file_id: str) -> float:
    result = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{speed_download}",
         *curl_headers(server), f"{server.url}/files/{file_id}/content"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    status, speed = result.stdout.split()
    assert status == "200", status
    return float(speed) / 1e6


def concurrent_uploads(server: Server, paths: list[Path]) -> float:
    """Total MB/s of several PUTs at once."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(paths)) as pool:
        list(pool.map(lambda p: curl_upload(server, p, "put"), paths))
    return sum(p.stat().st_size for p in paths) / (time.perf_counter() - started) / 1e6


def tus_upload(server: Server, path: Path, chunk: int) -> float:
    from tusclient import client

    started = time.perf_counter()
    uploader = client.TusClient(f"{server.url}/uploads", headers=server.headers).uploader(
        str(path), chunk_size=chunk, metadata={"filename": path.name}
    )
    uploader.upload()
    elapsed = time.perf_counter() - started
    file_id = (uploader.url or "").rsplit("/", 1)[1]
    served = httpx.get(f"{server.url}/files/{file_id}", headers=server.headers).json()["sha256"]
    if served != sha256_of(path):
        raise RuntimeError("tus upload stored other bytes")
    return path.stat().st_size / elapsed / 1e6


def wrk(
    server: Server,
    path: str,
    script: str | None,
    connections: int,
    seconds: int,
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """wrk's requests/s, p50 and p99 in ms, and (with a script that counts
    them) the number of 201 answers. Every request carries ``headers``
    (default: the server's), which the scripts' requests inherit."""
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", server.url + path]
    if script:
        argv[1:1] = ["-s", str(LUA / script)]
    for header, text in (server.headers if headers is None else headers).items():
        argv[1:1] = ["-H", f"{header}: {text}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    requests = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert requests, out
    figures = {"req_s": float(requests.group(1))}
    for name, label in (("p50_ms", "50%"), ("p99_ms", "99%")):
        match = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out)
        assert match, out
        value, unit = float(match.group(1)), match.group(2)
        figures[name] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    created = re.search(r"created (\d+)", out)
    if created:
        figures["created"] = float(created.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["non_2xx"] = float(non2xx.group(1)) if non2xx else 0.0
    return figures


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def rows(database: Path, table: str) -> int:
    import sqlite3

    with sqlite3.connect(database) as db:
        count: int = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return count
