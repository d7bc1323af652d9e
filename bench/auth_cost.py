"""What authentication costs (issue 14 item 10: at most 5 %), two ways in
the same run.

- Load: POST /users (an admin key from the database) and 4 KiB multipart
  uploads (a user's read and write key) against quart_app and against the
  same app with the key check skipped (bench/unchecked.py), both running
  side by side: in each round each workload runs on both back to back (A B,
  then B A in the next round), so that a pair sees the same moment of the
  machine. Cost = 1 - the median of the pairs' checked/skipped ratios.
- In process: the check itself (the ``before_request`` hook) timed over the
  cached path a client with a good key takes, in microseconds a request,
  and what share of a worker's time that is at the load's request rates.
  Quieter than the load figures, and the cross-check for them.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from devtools.auth import bearer
from quart_app import create_app

from . import measure
from .servers import start_ours

CHECKED, SKIPPED = "checked", "skipped"
# workload -> (path, wrk script, connections, needs the admin key)
WORKLOADS = {
    "create": ("/users", "post_users.lua", 50, True),
    "small_files": ("/files", "small_files.lua", 32, False),
}
# The check timed in BATCHES of BATCH_CALLS calls; the median batch is the
# figure, the fastest one what the code costs with no other process in the way.
BATCHES, BATCH_CALLS = 200, 200


def load(root: Path, seconds: int, rounds: int) -> dict[str, Any]:
    servers = {CHECKED: start_ours(root / "auth-checked")}
    try:
        servers[SKIPPED] = start_ours(root / "auth-skipped", app="bench.unchecked:create_app()")
        samples: dict[str, dict[str, list[float]]] = {
            workload: {CHECKED: [], SKIPPED: []} for workload in WORKLOADS
        }
        for round_ in range(rounds):
            # Each workload on both variants back to back, the first one
            # alternating: a pair sees the same moment of the machine.
            order = (CHECKED, SKIPPED) if round_ % 2 == 0 else (SKIPPED, CHECKED)
            for workload, (path, script, connections, admin) in WORKLOADS.items():
                for name in order:
                    server = servers[name]
                    headers = server.admin_headers if admin else server.headers
                    run = measure.wrk(server, path, script, connections, seconds, headers)
                    # A refused request is a fast one: it would flatter a variant.
                    if run["non_2xx"]:
                        raise RuntimeError(f"{name}: {run['non_2xx']:.0f} non-2xx answers")
                    samples[workload][name].append(run["req_s"])
    finally:
        for server in servers.values():
            server.stop()
    figures: dict[str, Any] = {"rounds": rounds, "seconds_each": seconds}
    for workload, by_variant in samples.items():
        ratios = [c / s for c, s in zip(by_variant[CHECKED], by_variant[SKIPPED], strict=True)]
        figures[workload] = {
            "req_s_checked": round(statistics.median(by_variant[CHECKED]), 1),
            "req_s_skipped": round(statistics.median(by_variant[SKIPPED]), 1),
            "samples": by_variant,
            # The median of the pairs' ratios: a pair's noise is shared.
            "pair_ratios": [round(r, 3) for r in ratios],
            "cost": round(1 - statistics.median(ratios), 3),
        }
    return figures


async def _time_check(root: Path) -> dict[str, float]:
    admin_key = "qa_bench-admin-key-for-the-check-alone"
    app = create_app(
        {
            "STORAGE_DIR": root / "uploads",
            "INSTANCE_DIR": root / "instance",
            "DATABASE_URL": f"sqlite+aiosqlite:///{root / 'instance' / 'db.sqlite3'}",
            "ADMIN_KEY": admin_key,
            # The cached path alone: no re-read of the key's row mid-timing
            # (a deployment re-reads it once per KEY_CACHE_SECONDS).
            "KEY_CACHE_SECONDS": 3600,
        }
    )
    logging.getLogger("quart_app.access").setLevel(logging.WARNING)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        admin = bearer(admin_key)
        user = await client.post(
            "/users", json={"name": "b", "email": "check@example.com"}, headers=admin
        )
        user_id = (await user.get_json())["id"]
        keys = {
            "user": await client.post(
                f"/users/{user_id}/keys", json={"scopes": ["read", "write"]}, headers=admin
            ),
            "admin": await client.post("/users/0/keys", json={"scopes": ["admin"]}, headers=admin),
        }
        secrets = {name: (await answer.get_json())["secret"] for name, answer in keys.items()}
        [hook] = [h for h in app.before_request_funcs[None] if h.__name__ == "_authenticate"]
        check = cast(Callable[[], Awaitable[None]], hook)
        figures = {}
        for label, path, key in (
            ("small_files", "/files", secrets["user"]),
            ("create", "/users", secrets["admin"]),
        ):
            async with app.test_request_context(path, method="POST", headers=bearer(key)):
                await check()  # the first use reads the key's row: later ones are cached
                batches = []
                for _ in range(BATCHES):
                    started = time.perf_counter()
                    for _ in range(BATCH_CALLS):
                        await check()
                    batches.append((time.perf_counter() - started) / BATCH_CALLS * 1e6)
            figures[label] = round(statistics.median(batches), 2)
            figures[f"{label}_fastest"] = round(min(batches), 2)
    return figures


def check_microseconds(root: Path) -> dict[str, float]:
    """Microseconds the key check takes on the cached path, per request."""
    root.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_time_check(root))


def measure_auth(root: Path, seconds: int, rounds: int, have_wrk: bool) -> dict[str, Any]:
    check_us = check_microseconds(root / "auth-in-process")
    figures: dict[str, Any] = {"check_us": check_us}
    if have_wrk:
        figures["load"] = load(root, seconds, rounds)
        for workload in ("create", "small_files"):
            # One worker serves the load: check time per wall second.
            rate = figures["load"][workload]["req_s_checked"]
            share = check_us[workload] * rate / 1e6
            figures["load"][workload]["check_share_of_worker"] = round(share, 4)
    return figures


def summary(figures: dict[str, Any]) -> str:
    lines = [f"  key check, cached path: {figures['check_us']} us a request"]
    for workload, load in (figures.get("load") or {}).items():
        if isinstance(load, dict):
            lines.append(
                f"  {workload}: {load['req_s_checked']}/s with the check, "
                f"{load['req_s_skipped']}/s without: cost {load['cost']:.1%} "
                f"(the check's own time: {load['check_share_of_worker']:.1%})"
            )
    return "\n".join(lines)
