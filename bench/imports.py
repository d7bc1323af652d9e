"""Archive imports against posting the same files one by one, in one run,
and the worker's peak memory while it imports a large archive and one with
many entries.

    python -m bench.imports            1,000 x 4 KiB; 1 GiB and 10,000-entry archives
    python -m bench.imports --quick    the same with a 256 MiB archive
    python -m bench.imports --smoke    100 x 4 KiB, 16 MiB, 1,000 entries (CI)

Figures are ratios taken in the same run (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

from devtools.auth import bearer
from devtools.server import RunningServer, memory_kib, start_server

MiB = 1024 * 1024
MODES = {
    "full": {"small": 1000, "big": 1024 * MiB, "many": 10_000},
    "quick": {"small": 1000, "big": 256 * MiB, "many": 10_000},
    "smoke": {"small": 100, "big": 16 * MiB, "many": 1000},
}


def small_files(count: int) -> list[bytes]:
    return [os.urandom(4096) for _ in range(count)]


def write_zip(path: Path, entries: list[tuple[str, int]]) -> Path:
    """A stored (uncompressed) zip of random entries, written in 1 MiB steps."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, size in entries:
            with archive.open(name, "w", force_zip64=size > 1 << 31) as entry:
                left = size
                while left:
                    step = min(left, MiB)
                    entry.write(os.urandom(step))
                    left -= step
    return path


def user_key(server: RunningServer) -> str:
    with httpx.Client(base_url=server.url, headers=bearer(), timeout=30) as admin:
        user = admin.post("/users", json={"name": "Bench", "email": "bench@example.com"})
        key = admin.post(f"/users/{user.json()['id']}/keys", json={})
    secret: str = key.json()["secret"]
    return secret


def import_archive(server: RunningServer, key: str, path: Path) -> dict[str, Any]:
    headers = bearer(key)
    with path.open("rb") as body:
        response = httpx.post(f"{server.url}/imports", content=body, headers=headers, timeout=600)
    assert response.status_code == 202, response.text
    location = response.headers["Location"]
    while True:
        job: dict[str, Any] = httpx.get(location, headers=headers, timeout=30).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            assert job["status"] == "succeeded", job
            return job
        time.sleep(0.05)


async def post_one_by_one(server: RunningServer, key: str, files: list[bytes]) -> None:
    limit = asyncio.Semaphore(32)
    async with httpx.AsyncClient(base_url=server.url, headers=bearer(key), timeout=60) as client:

        async def one(i: int, data: bytes) -> None:
            async with limit:
                response = await client.post(
                    "/files", files={"file": (f"f{i}.bin", data, "application/octet-stream")}
                )
                assert response.status_code == 201, response.text

        await asyncio.gather(*(one(i, data) for i, data in enumerate(files)))


def peak_rss_mib(server: RunningServer) -> float:
    return memory_kib(server.worker_pid(), "VmHWM") / 1024


def run(mode: str, out: Path | None) -> dict[str, Any]:
    sizes = MODES[mode]
    results: dict[str, Any] = {"mode": mode}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = small_files(sizes["small"])
        small_zip = root / "small.zip"
        with zipfile.ZipFile(small_zip, "w", zipfile.ZIP_STORED) as archive:
            for i, data in enumerate(files):
                archive.writestr(f"f{i}.bin", data)
        server = start_server(root / "server", fresh=True)
        try:
            key = user_key(server)
            started = time.perf_counter()
            import_archive(server, key, small_zip)
            imported = time.perf_counter() - started
            started = time.perf_counter()
            asyncio.run(post_one_by_one(server, key, files))
            posted = time.perf_counter() - started
        finally:
            server.stop()
        count = sizes["small"]
        results["small_files"] = {
            "files": count,
            "import_files_per_s": round(count / imported, 1),
            "one_by_one_files_per_s": round(count / posted, 1),
            "import_over_one_by_one": round(posted / imported, 2),
        }
        part = min(64 * MiB, sizes["big"])
        big = [(f"part{i}.bin", part) for i in range(sizes["big"] // part)]
        many = [(f"e{i}.bin", 1024) for i in range(sizes["many"])]
        for label, entries in (("big_archive", big), ("many_entries", many)):
            archive_path = write_zip(root / f"{label}.zip", entries)
            server = start_server(root / f"server-{label}", fresh=True)
            try:
                key = user_key(server)
                idle = peak_rss_mib(server)
                started = time.perf_counter()
                job = import_archive(server, key, archive_path)
                seconds = time.perf_counter() - started
                peak = peak_rss_mib(server)
            finally:
                server.stop()
            results[label] = {
                "archive_mib": round(archive_path.stat().st_size / MiB, 1),
                "entries": job["progress"]["entries_total"],
                "seconds": round(seconds, 2),
                "worker_peak_rss_mib_before": round(idle, 1),
                "worker_peak_rss_mib": round(peak, 1),
            }
            archive_path.unlink()
    print(json.dumps(results, indent=2))
    if out is not None:
        out.write_text(json.dumps(results, indent=2))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.imports")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    run("smoke" if args.smoke else "quick" if args.quick else "full", args.out)


if __name__ == "__main__":
    main()
