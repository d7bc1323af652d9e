"""`make bench`: quart_app against the disk and its peers, in one run.

    python -m bench            1 GiB files, 3 runs each, 10 s load tests
    python -m bench --quick    256 MiB, 1 run, 3 s load tests (under 2 minutes)
    python -m bench --smoke    4 MiB, 1 run: keeps the benchmark working in CI

Every figure is taken in the same run, so compare ratios, not absolutes: the
machine is shared and noisy. Prints a table and writes JSON (--out).

quart_app runs with keys, as deployed: a user's read and write key on every
request, an operator's admin key for POST /users (bench/servers.py), and
what the key check costs is measured too (bench/auth_cost.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.files import MiB, make_file, sha256_of

from . import auth_cost, measure
from .servers import (
    Server,
    start_fastapi,
    start_nothing,
    start_nothing_256k,
    start_ours,
    start_stock_quart,
)


@dataclass(frozen=True)
class Mode:
    name: str
    size: int
    runs: int
    seconds: int
    concurrent_size: int
    small_size: int


MODES = {
    "full": Mode("full", 1024 * MiB, 3, 10, 256 * MiB, 64 * MiB),
    "quick": Mode("quick", 256 * MiB, 1, 3, 32 * MiB, 16 * MiB),
    "smoke": Mode("smoke", 4 * MiB, 1, 1, 1 * MiB, 1 * MiB),
}


def cpu_per_gib(seconds: list[float], size: int) -> float:
    return round(statistics.median(seconds) * (1 << 30) / size, 2)


def spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 1),
        "median": round(statistics.median(values), 1),
        "max": round(max(values), 1),
    }


class Bench:
    def __init__(self, mode: Mode, root: Path) -> None:
        self.mode = mode
        self.root = root.resolve()  # servers run with another cwd
        self.results: dict[str, Any] = {"mode": mode.name, "size_bytes": mode.size}
        self.file = make_file(root / "payload.bin", mode.size)

    def log(self, text: str) -> None:
        print(text, flush=True)

    def clear_uploads(self, server: Server) -> None:
        """Free the blocks the last upload used (see measure.warm_disk)."""
        for directory in (server.root / "uploads" / "blobs", server.root / "data"):
            if directory.exists():
                for path in directory.rglob("*"):
                    if path.is_file() and path.suffix != ".sqlite3":
                        path.unlink()

    def uploads(self, server: Server, verify: bool) -> dict[str, Any]:
        figures: dict[str, Any] = {}
        expected = sha256_of(self.file) if verify else None
        for how in ("multipart", "put"):
            runs, peaks = [], []
            for _ in range(self.mode.runs):
                self.clear_uploads(server)
                measure.warm_disk(self.root, self.mode.size)
                server.reset_peak_memory()
                run = measure.curl_upload(server, self.file, how)
                if expected is not None and run.answer.get("sha256") != expected:
                    raise RuntimeError(f"{server.name} stored other bytes")
                runs.append(run)
                peaks.append(server.peak_memory_mib())
            figures[how] = {
                "mb_s": spread([run.mb_s for run in runs]),
                "peak_rss_mib_largest": round(max(p[0] for p in peaks), 1),
                "peak_rss_mib_sum": round(max(p[1] for p in peaks), 1),
                # Per GiB uploaded, medians: where the CPU went.
                "server_cpu_s_per_gib": cpu_per_gib([r.server_cpu_s for r in runs], self.mode.size),
                "client_cpu_s_per_gib": cpu_per_gib([r.client_cpu_s for r in runs], self.mode.size),
                "cores_busy": round(
                    statistics.median((r.server_cpu_s + r.client_cpu_s) / r.wall_s for r in runs), 2
                ),
            }
            self.log(f"  {server.name:12} {how:9} {figures[how]['mb_s']} MB/s")
        return figures

    def run(self) -> dict[str, Any]:
        mode, results = self.mode, self.results
        measure.warm_disk(self.root, mode.size)
        results["disk_mb_s"] = spread(
            [measure.disk_mb_s(self.root, mode.size) for _ in range(mode.runs)]
        )
        self.log(f"disk (dd conv=fdatasync): {results['disk_mb_s']} MB/s")

        ours = start_ours(self.root / "ours")
        try:
            results["upload"] = self.uploads(ours, verify=True)
            results["memory"] = self.memory(ours)
            results["tus"] = self.tus(ours)
            results["download_mb_s"] = self.download(ours)
            results.update(self.load(ours))
        finally:
            ours.stop()
        results["auth"] = self.auth()

        # Every peer gets every figure it can answer: the do-nothing server
        # answers 201 to anything, so its small files and creates are the
        # ceiling the client and the cores set.
        results["peers"] = {}
        starters: dict[str, Callable[[Path], Server]] = {
            "stock_quart": start_stock_quart,
            "fastapi": start_fastapi,
            "nothing": start_nothing,
            "nothing_256k": start_nothing_256k,
        }
        for name, start in starters.items():
            server = start(self.root / name)
            try:
                peer = results["peers"][name] = self.uploads(server, verify=False)
                if name != "nothing_256k" and measure.have_wrk():
                    peer["small_files_per_s"] = self.small_files(server)
                    peer["create"] = self.creates(server)
            finally:
                server.stop()
        results["ratios"] = ratios(results)
        return results

    def memory(self, server: Server) -> dict[str, float]:
        small = make_file(self.root / "small.bin", self.mode.small_size)
        figures = {}
        for label, path in (("small", small), ("large", self.file)):
            self.clear_uploads(server)
            server.reset_peak_memory()
            measure.curl_upload(server, path, "put")
            figures[f"peak_rss_mib_{label}"] = round(server.peak_memory_mib()[0], 1)
        paths = [
            make_file(self.root / f"c{i}.bin", self.mode.concurrent_size + i) for i in range(8)
        ]
        self.clear_uploads(server)
        server.reset_peak_memory()
        figures["concurrent_8_mb_s"] = round(measure.concurrent_uploads(server, paths), 1)
        figures["peak_rss_mib_8_concurrent"] = round(server.peak_memory_mib()[0], 1)
        figures["small_bytes"] = self.mode.small_size
        figures["concurrent_bytes_each"] = self.mode.concurrent_size
        self.log(f"  memory: {figures}")
        return figures

    def tus(self, server: Server) -> dict[str, Any]:
        speeds = []
        for _ in range(self.mode.runs):
            self.clear_uploads(server)
            measure.warm_disk(self.root, self.mode.size)
            speeds.append(measure.tus_upload(server, self.file, 8 * MiB))
        self.log(f"  tus (tuspy, 8 MiB chunks): {spread(speeds)} MB/s")
        return {"mb_s": spread(speeds)}

    def download(self, server: Server) -> dict[str, float]:
        answer = measure.curl_upload(server, self.file, "put").answer
        speeds = [measure.curl_download(server, str(answer["id"])) for _ in range(self.mode.runs)]
        self.log(f"  download: {spread(speeds)} MB/s")
        return spread(speeds)

    def auth(self) -> dict[str, Any]:
        # Many short pairs rather than a few long runs: the machine's noise
        # comes and goes in bursts of seconds.
        smoke = self.mode.name == "smoke"
        rounds, seconds = (1, 1) if smoke else (8, max(2, self.mode.seconds // 2))
        figures = auth_cost.measure_auth(self.root, seconds, rounds, measure.have_wrk())
        self.log(auth_cost.summary(figures))
        return figures

    def creates(self, server: Server) -> dict[str, float]:
        # POST /users needs an admin key (quart_app's: server.admin_headers).
        figures = measure.wrk(
            server, "/users", "post_users.lua", 50, self.mode.seconds, server.admin_headers or None
        )
        health = measure.wrk(server, "/healthz", None, 50, self.mode.seconds)
        figures["healthz_req_s"] = health["req_s"]
        self.log(f"  {server.name}: POST /users {figures}")
        return figures

    def small_files(self, server: Server) -> float:
        figures = measure.wrk(server, "/files", "small_files.lua", 32, self.mode.seconds)
        self.log(f"  {server.name}: 4 KiB files {figures['req_s']}/s")
        return figures["req_s"]

    def load(self, server: Server) -> dict[str, Any]:
        if not measure.have_wrk():
            self.log("  wrk is not installed: create and small-file figures skipped")
            return {"create": None, "small_files_per_s": None}
        database = server.root / "instance" / "db.sqlite3"
        # The operator account and the bench's own user are there already.
        before = measure.rows(database, "users")
        create = self.creates(server)
        # wrk counts the 201s it read; requests in flight when it stops are
        # committed (a batch is never cut short) but never counted, so rows
        # may exceed the count by at most the number of connections.
        create["rows"] = float(measure.rows(database, "users") - before)
        create["connections"] = 50.0
        return {"create": create, "small_files_per_s": self.small_files(server)}


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    def median(figure: dict[str, Any]) -> float:
        return float(figure["mb_s"]["median"])

    ours, peers = results["upload"], results["peers"]
    found: dict[str, float | None] = {}
    for how in ("multipart", "put"):
        found[f"{how}_vs_disk"] = median(ours[how]) / results["disk_mb_s"]["median"]
        for name in peers:
            found[f"{how}_vs_{name}"] = median(ours[how]) / median(peers[name][how])
    found["tus_vs_put"] = median(results["tus"]) / median(ours["put"])
    create = results.get("create")
    found["create_vs_healthz"] = create["req_s"] / create["healthz_req_s"] if create else None
    small = results.get("small_files_per_s")
    for name in peers:
        peer_small = peers[name].get("small_files_per_s")
        found[f"small_files_vs_{name}"] = small / peer_small if small and peer_small else None
        peer_create = peers[name].get("create")
        found[f"create_vs_{name}"] = (
            create["req_s"] / peer_create["req_s"] if create and peer_create else None
        )
    return {k: (round(v, 2) if v is not None else None) for k, v in found.items()}


COLUMNS = (
    ("quart_app", None),
    ("FastAPI", "fastapi"),
    ("stock Quart", "stock_quart"),
    ("do-nothing", "nothing"),
    ("do-nothing, 256 KiB reads", "nothing_256k"),
)


def table(results: dict[str, Any]) -> str:
    """The README's table: one row per figure, one column per server, medians."""

    def figures(peer: str | None) -> dict[str, Any]:
        return (
            results
            if peer is None
            else {"upload": results["peers"][peer], **results["peers"][peer]}
        )

    def number(value: float | None, unit: str = "") -> str:
        return "" if value is None else f"{value:,.0f}{unit}"

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> str:
        cells = []
        for _, peer in COLUMNS:
            try:
                cells.append(cell(figures(peer)))
            except (KeyError, TypeError):
                cells.append("")
        return f"| {label} | " + " | ".join(cells) + " |"

    def create(f: dict[str, Any]) -> str:
        c = f["create"]
        return f"{number(c['req_s'])} ({number(c['p99_ms'], ' ms')})"

    size = results["size_bytes"] // MiB
    lines = [
        "| | " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
        row("4 KiB multipart uploads/s, 32 connections", lambda f: number(f["small_files_per_s"])),
        row(
            f"{size} MiB multipart MB/s",
            lambda f: number(f["upload"]["multipart"]["mb_s"]["median"]),
        ),
        row(f"{size} MiB PUT MB/s", lambda f: number(f["upload"]["put"]["mb_s"]["median"])),
        row(
            f"tus, tuspy 8 MiB chunks, {size} MiB MB/s",
            lambda f: number(f["tus"]["mb_s"]["median"]),
        ),
        row("POST /users req/s (p99), 50 connections", create),
        row("GET /healthz req/s, 50 connections", lambda f: number(f["create"]["healthz_req_s"])),
        row(
            "worker peak RSS during uploads, MiB",
            lambda f: (
                f"{max(f['upload'][h]['peak_rss_mib_largest'] for h in ('multipart', 'put')):.1f}"
            ),
        ),
        row(
            "server CPU s per GiB, multipart / PUT",
            lambda f: " / ".join(
                f"{f['upload'][h]['server_cpu_s_per_gib']:.1f}" for h in ("multipart", "put")
            ),
        ),
    ]
    return "\n".join(lines)


def mode_arguments(prog: str, out: str) -> argparse.ArgumentParser:
    """What every benchmark takes: its mode (--quick, --smoke; full
    without) and where its JSON goes (see :func:`chosen_mode`)."""
    parser = argparse.ArgumentParser(prog=prog)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true")
    group.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(out))
    return parser


def chosen_mode(args: argparse.Namespace) -> Mode:
    return MODES["quick" if args.quick else "smoke" if args.smoke else "full"]


@contextmanager
def work_directory(root: Path, keep: bool = False) -> Iterator[Path]:
    """``root`` for a run's servers; on a failure the last lines of every
    log under it are printed (they say why), and it is removed afterwards
    unless ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        yield root
    except Exception:
        for log in sorted(root.rglob("*.log")):
            print(f"--- last lines of {log.relative_to(root)}")
            print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        raise
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def write_results(results: dict[str, Any], out: Path, started: float) -> None:
    """Stamp a run's results with its duration and date and write its JSON."""
    results["seconds"] = round(time.time() - started, 1)
    results["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


def main() -> int:
    parser = mode_arguments("python -m bench", "bench/results/latest.json")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temp dir)")
    args = parser.parse_args()
    mode = chosen_mode(args)
    root = args.dir or Path(tempfile.mkdtemp(prefix="quart-app-bench-", dir="."))
    started = time.time()
    with work_directory(root, keep=args.dir is not None):
        results = Bench(mode, root).run()
    write_results(results, args.out, started)
    print(table(results))
    print(json.dumps(results["ratios"], indent=2))
    print(f"written to {args.out} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
