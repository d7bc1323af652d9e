"""The end-to-end tier: real Hypercorn processes on free loopback ports, and
everything else that spawns processes (curl, tus clients, nginx, the
operator commands, schemathesis, the benchmark). Every test here is marked
``e2e``, so ``pytest -m "not e2e"`` runs the unit and app tiers alone."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from devtools.server import RunningServer, start_server

TIER = Path(__file__).parent

# The modules with no wall-clock budget, whose tests may share the machine
# with other test runs (devtools/test_matrix.py runs them beside the
# PostgreSQL configurations). Every other module is marked ``alone``: a
# /healthz answered in 1.25 s under a flood, a 503 within the database
# timeout, a backup making progress under load, a lease renewed in time,
# a browser's clicks, the benchmark; also a README session that waits a
# second for a job, an app started apart under Quart's 6 s test timeout,
# 256 MiB sent to S3 within curl's 20 s, bursts of writes within the lock
# timeout. A new module is ``alone`` until it is put here.
SHARES_THE_MACHINE = {
    "test_deploy",
    "test_doctor",
    "test_downloads",
    "test_idempotency",
    "test_integrity",
    "test_keys",
    "test_links",
    "test_postgresql_s3",
    "test_quotas",
    "test_schemathesis",
    "test_setup",
    "test_smoke",
    "test_tus",
    "test_users",
    "test_zygote",
}


# tryfirst: the mark must be on before pytest's own hook applies -m.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A conftest's collection hook sees the whole session's items, not only
    # this directory's.
    for item in items:
        if item.path.is_relative_to(TIER):
            item.add_marker(pytest.mark.e2e)
            # Under pytest-xdist (addopts: -n auto) every e2e test goes to
            # one worker, one after the other: their budgets (/healthz under
            # 1.25 s during a flood, a smoke bench) assume no other e2e beside.
            item.add_marker(pytest.mark.xdist_group("e2e"))
            if item.path.stem not in SHARES_THE_MACHINE:
                item.add_marker(pytest.mark.alone)


# Each phase's report, kept on the test item: a fixture's teardown reads it
# to know whether the test failed (the browser tests then save a screenshot).
PHASE_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    return report


def failed(item: pytest.Item) -> bool:
    return any(r.failed for r in item.stash.get(PHASE_REPORTS, {}).values())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path / "server")
    try:
        yield running
    finally:
        running.stop()
