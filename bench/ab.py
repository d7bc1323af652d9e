"""Side by side: variants of quart_app (and FastAPI) measured one after the
other, round after round, so that each comparison is taken in the same
minutes of a shared machine. What the README's A/B figures come from.

    python -m bench.ab uvloop,asyncio small,users,put,multipart
    python -m bench.ab inline,files,fastapi small --rounds 3 --seconds 8
    python -m bench.ab uvloop put,tus --size-mib 512

Prints each variant's figures per round and their medians.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from devtools.files import MiB, make_file

from . import measure
from .servers import Server, start_fastapi, start_ours

VARIANTS: dict[str, Callable[[Path], Server]] = {
    # As deployed (hypercorn.toml, the default settings).
    "uvloop": lambda root: start_ours(root),
    "inline": lambda root: start_ours(root),
    "asyncio": lambda root: start_ours(root, ("--worker-class", "asyncio")),
    "files": lambda root: start_ours(root, extra_env={"QUART_APP_INLINE_BLOB_BYTES": "0"}),
    "fastapi": start_fastapi,
}


def measure_once(server: Server, what: list[str], seconds: int, payload: Path) -> dict[str, float]:
    figures: dict[str, float] = {}
    if "small" in what:
        figures["small_per_s"] = measure.wrk(server, "/files", "small_files.lua", 32, seconds)[
            "req_s"
        ]
    if "users" in what:
        users = measure.wrk(server, "/users", "post_users.lua", 50, seconds)
        figures["users_per_s"], figures["users_p99_ms"] = users["req_s"], users["p99_ms"]
    for how in ("multipart", "put"):
        if how in what:
            measure.warm_disk(payload.parent, payload.stat().st_size)
            upload = measure.curl_upload(server, payload, how)
            figures[f"{how}_mb_s"] = upload.mb_s
            gib = payload.stat().st_size / (1 << 30)
            figures[f"{how}_server_cpu_s_per_gib"] = upload.server_cpu_s / gib
    if "tus" in what:
        measure.warm_disk(payload.parent, payload.stat().st_size)
        figures["tus_mb_s"] = measure.tus_upload(server, payload, 8 * MiB)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab")
    parser.add_argument("variants", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("what", help="comma-separated, of small, users, multipart, put, tus")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=256)
    args = parser.parse_args()
    names, what = args.variants.split(","), args.what.split(",")
    root = Path(tempfile.mkdtemp(prefix="quart-app-bench-", dir="."))
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    try:
        payload = make_file(root / "payload.bin", args.size_mib * MiB)
        for round_ in range(args.rounds):
            for name in names:
                server = VARIANTS[name](root / f"{name}-{round_}")
                try:
                    results[name].append(measure_once(server, what, args.seconds, payload))
                finally:
                    server.stop()
                print(f"round {round_ + 1} {name}: {results[name][-1]}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for name, rounds in results.items():
        medians = {k: round(statistics.median(r[k] for r in rounds), 2) for k in rounds[0]}
        print(f"median {name}: {medians}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
