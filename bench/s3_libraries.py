"""aioboto3 against obstore: the same 1 GiB multipart upload to SeaweedFS.

    python -m bench.s3_libraries [--size-mib 1024] [--runs 3] [--part-mib 16]

Starts a throwaway SeaweedFS (devtools/seaweed.py) on loopback, writes a file
of random-looking bytes once, then uploads it with each library in turn, in
a fresh child process per run (so its peak RSS, VmHWM, is its own). Both do
the same work the S3 backend does: read 16 MiB parts from disk, hash them
(sha256) and upload them as one multipart upload, at most two parts in
memory (one uploading while the next is read). Prints one JSON line per run
and a summary; the figures are in bench/S3_LIBRARIES.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from devtools import PROJECT_ROOT
from devtools.files import MiB, make_file
from devtools.seaweed import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, start_seaweed
from devtools.server import memory_kib


async def _parts(path: Path, part_bytes: int, digest: Any) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while True:
            part = await asyncio.to_thread(handle.read, part_bytes)
            if not part:
                return
            await asyncio.to_thread(digest.update, part)
            yield part


async def upload_aioboto3(endpoint: str, path: Path, key: str, part_bytes: int) -> str:
    from quart_app.storage.s3.client import s3_client

    digest = hashlib.sha256()
    # The client as the S3 backend configures it (quart_app/storage/s3/client.py).
    async with s3_client(endpoint, REGION, ACCESS_KEY, SECRET_KEY) as client:
        created = await client.create_multipart_upload(Bucket=BUCKET, Key=key)
        upload_id = created["UploadId"]
        etags: list[str] = []
        in_flight: asyncio.Task[Any] | None = None
        number = 0
        async for part in _parts(path, part_bytes, digest):
            if in_flight is not None:
                etags.append((await in_flight)["ETag"])
            number += 1
            in_flight = asyncio.ensure_future(
                client.upload_part(
                    Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=part
                )
            )
            del part
        if in_flight is not None:
            etags.append((await in_flight)["ETag"])
        await client.complete_multipart_upload(
            Bucket=BUCKET,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": i + 1, "ETag": etag} for i, etag in enumerate(etags)]
            },
        )
    return digest.hexdigest()


async def upload_obstore(endpoint: str, path: Path, key: str, part_bytes: int) -> str:
    from obstore import put_async
    from obstore.store import S3Store

    digest = hashlib.sha256()
    store = S3Store(
        BUCKET,
        endpoint=endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        client_options={"allow_http": True},
    )
    await put_async(
        store,
        key,
        _parts(path, part_bytes, digest),
        use_multipart=True,
        chunk_size=part_bytes,
        max_concurrency=2,
    )
    return digest.hexdigest()


LIBRARIES = {"aioboto3": upload_aioboto3, "obstore": upload_obstore}


def _child(library: str, endpoint: str, path: Path, part_bytes: int) -> None:
    key = f"bench/{library}-{time.monotonic_ns()}"
    started = time.perf_counter()
    sha256 = asyncio.run(LIBRARIES[library](endpoint, path, key, part_bytes))
    seconds = time.perf_counter() - started
    peak = memory_kib(__import__("os").getpid(), "VmHWM") / 1024
    size = path.stat().st_size
    print(
        json.dumps(
            {
                "library": library,
                "seconds": round(seconds, 2),
                "mib_per_s": round(size / MiB / seconds, 1),
                "peak_rss_mib": round(peak, 1),
                "sha256": sha256,
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--part-mib", type=int, default=16)
    parser.add_argument("--child", nargs=3, metavar=("LIBRARY", "ENDPOINT", "FILE"))
    args = parser.parse_args(argv)
    part_bytes = args.part_mib * MiB
    if args.child:
        library, endpoint, file = args.child
        _child(library, endpoint, Path(file), part_bytes)
        return 0
    with tempfile.TemporaryDirectory(prefix="s3bench-") as scratch:
        root = Path(scratch)
        payload = make_file(root / "payload.bin", args.size_mib * MiB)
        seaweed = start_seaweed(root / "seaweed")
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in LIBRARIES}
        try:
            for _ in range(args.runs):
                for library in LIBRARIES:  # alternated, so drift hits both alike
                    child = subprocess.run(
                        [
                            sys.executable,
                            "-m",
                            "bench.s3_libraries",
                            "--part-mib",
                            str(args.part_mib),
                            "--child",
                            library,
                            seaweed.endpoint,
                            str(payload),
                        ],
                        cwd=PROJECT_ROOT,
                        capture_output=True,
                        text=True,
                    )
                    if not child.stdout.strip():
                        raise RuntimeError(f"{library} failed:\n{child.stderr[-2000:]}")
                    line = json.loads(child.stdout.strip().splitlines()[-1])
                    # obstore 0.12.1 has been seen to abort (SIGABRT) as the
                    # interpreter exits, after its upload completed: recorded.
                    line["exit_status"] = child.returncode
                    print(json.dumps(line), flush=True)
                    results[library].append(line)
        finally:
            seaweed.stop()
    summary = {
        name: {
            "median_mib_per_s": statistics.median(r["mib_per_s"] for r in runs),
            "median_peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
            "abnormal_exits": sum(1 for r in runs if r["exit_status"] != 0),
        }
        for name, runs in results.items()
    }
    print(json.dumps({"size_mib": args.size_mib, "part_mib": args.part_mib, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
