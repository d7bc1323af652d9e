"""One measurement of the checkout it is run in (bench.versions runs it in
each version's worktree, as ``python <this file> WHAT SIZE_MIB`` with that
worktree as the working directory): that version's quart_app, served as
deployed by that version's bench.servers. Prints one JSON object.

WHAT is one of: patch (median ms of 100 PATCHes of 1 KB on one upload),
tus (tuspy in 8 MiB chunks and a curl PUT of the same file, MB/s),
put (a curl PUT and a curl multipart upload of the file: MB/s, and the
server's CPU seconds per GiB),
users (wrk POST /users, 50 connections, 8 s, and the server's own p99 and
slowest from its access log), small (wrk 4 KiB multipart uploads, 32
connections, 8 s), syscalls (strace -c on the worker over 50 PATCHes of
1 KB: fdatasync and all system calls, per PATCH).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.getcwd())  # the version under test, not this checkout

import httpx

from bench import measure
from bench.servers import Server, start_ours
from devtools.files import MiB, make_file

TUS = {"Tus-Resumable": "1.0.0"}


class TinyPatches:
    """PATCHes of 1 KB, one after the other, on one upload."""

    def __init__(self, server: Server) -> None:
        self.client = httpx.Client(headers=server.headers, timeout=30)
        made = self.client.post(
            f"{server.url}/uploads", headers={**TUS, "Upload-Length": str(10**9)}
        )
        made.raise_for_status()
        location = made.headers["Location"]
        self.url = location if location.startswith("http") else server.url + location
        self.offset = 0

    def send(self) -> float:
        headers = {
            **TUS,
            "Upload-Offset": str(self.offset),
            "Content-Type": "application/offset+octet-stream",
        }
        started = time.perf_counter()
        answer = self.client.patch(self.url, content=b"x" * 1000, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status_code != 204:
            raise RuntimeError(f"PATCH answered {answer.status_code}: {answer.text}")
        self.offset += 1000
        return elapsed


def syscalls(server: Server, root: Path) -> dict[str, float]:
    patches = TinyPatches(server)
    for _ in range(5):
        patches.send()
    report = root / "strace.txt"
    tracer = subprocess.Popen(
        ["strace", "-f", "-c", "-p", str(server.pids()[-1]), "-o", str(report)],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)  # attached to every thread
    count = 50
    for _ in range(count):
        patches.send()
    time.sleep(0.3)
    tracer.send_signal(2)
    tracer.wait()
    calls: dict[str, int] = {}
    for line in report.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[3].isdigit():
            calls[fields[-1]] = int(fields[3])
    return {
        "fdatasync_per_patch": calls.get("fdatasync", 0) / count,
        "fsync_per_patch": calls.get("fsync", 0) / count,
        "syscalls_per_patch": calls.get("total", 0) / count,
    }


def users(server: Server) -> dict[str, float]:
    figures = measure.wrk(server, "/users", "post_users.lua", 50, 8)
    durations = sorted(
        entry["duration_ms"]
        for line in (server.root / "server.log").read_text().splitlines()
        if line.startswith("{")
        for entry in [json.loads(line)]
        if entry.get("method") == "POST" and entry.get("path") == "/users"
    )
    return {
        "req_s": figures["req_s"],
        "p50_ms": figures["p50_ms"],
        "p99_ms": figures["p99_ms"],
        "server_p99_ms": durations[int(len(durations) * 0.99)],
        "server_max_ms": durations[-1],
    }


def uploads(server: Server, root: Path, size_mib: int) -> dict[str, float]:
    payload = make_file(root / "payload.bin", size_mib * MiB)
    figures: dict[str, float] = {}
    for how in ("put", "multipart"):
        measure.warm_disk(root, size_mib * MiB)
        upload = measure.curl_upload(server, payload, how)
        figures[f"{how}_mb_s"] = upload.mb_s
        figures[f"{how}_cpu_s_per_gib"] = upload.server_cpu_s * 1024 / size_mib
    return figures


def probe(what: str, size_mib: int, root: Path) -> dict[str, Any]:
    server = start_ours(root / "server")
    try:
        if what == "patch":
            patches = TinyPatches(server)
            return {"patch_ms": statistics.median(patches.send() for _ in range(100))}
        if what == "tus":
            payload = make_file(root / "payload.bin", size_mib * MiB)
            measure.warm_disk(root, size_mib * MiB)
            tus = measure.tus_upload(server, payload, 8 * MiB)
            measure.warm_disk(root, size_mib * MiB)
            put = measure.curl_upload(server, payload, "put").mb_s
            return {"tus_mb_s": tus, "put_mb_s": put, "tus_vs_put": tus / put}
        if what == "put":
            return uploads(server, root, size_mib)
        if what == "users":
            return users(server)
        if what == "small":
            figures = measure.wrk(server, "/files", "small_files.lua", 32, 8)
            return {"small_per_s": figures["req_s"], "small_p99_ms": figures["p99_ms"]}
        if what == "syscalls":
            return syscalls(server, root)
        raise SystemExit(f"unknown measurement {what!r}")
    finally:
        server.stop()


def main() -> int:
    what, size_mib = sys.argv[1], int(sys.argv[2])
    root = Path(tempfile.mkdtemp(prefix="quart-app-probe-", dir="."))
    try:
        print(json.dumps(probe(what, size_mib, root)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
