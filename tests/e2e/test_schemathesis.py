"""schemathesis against /openapi.json of a real Hypercorn: generated
requests (examples, coverage and fuzzing phases, bounded) must get no 5xx,
and every response must conform to the document: status code, content
type, headers and body schema.

Four checks are left out, each because the behaviour is right and the
check cannot know it: ``not_a_server_error`` (a 507 quota-exceeded is the
answer when the fuzzer has set an account's quota below the upload it then
sends; the test itself checks every 5xx in the access log instead),
``positive_data_acceptance`` (a schema-valid cursor can still be forged,
an Idempotency-Key can be reused with another body),
``negative_data_rejection`` and ``missing_required_header`` (tus answers a
missing or wrong Tus-Resumable with 412, which those checks do not expect).
Replay a failure with QUART_APP_FUZZ_SEED=<seed printed by schemathesis>.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devtools.auth import TEST_ADMIN_KEY
from devtools.server import RunningServer, start_server

QUOTA_EXCEEDED = "urn:quart-app:problem:quota-exceeded"
SEED = os.environ.get("QUART_APP_FUZZ_SEED", "20261121")
EXAMPLES = os.environ.get("QUART_APP_FUZZ_EXAMPLES", "40")


def schemathesis(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"), "--no-color", "run",
            f"{server.url}/openapi.json",
            *args,
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", EXAMPLES,
            "--seed", SEED,
            "--max-time", "30",
            "--request-timeout", "10",
            "--continue-on-failure",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=server.root,  # its .schemathesis/ cache stays out of the checkout
    )  # fmt: skip


def test_the_api_conforms_to_its_openapi_document(tmp_path: Path) -> None:
    """Run with the admin key: every operation is reachable. schemathesis
    also sends bad keys and expects 401; the failure limit (off here) would
    answer the later ones 429 (tests/app/test_authentication.py)."""
    server = start_server(tmp_path / "server", {"QUART_APP_AUTH_FAILURES_PER_MINUTE": "0"})
    try:
        result = schemathesis(
            server,
            "--header", f"Authorization: Bearer {TEST_ADMIN_KEY}",
            "--checks", "all",
            "--exclude-checks",
            "not_a_server_error,positive_data_acceptance,negative_data_rejection,"
            "missing_required_header",
        )  # fmt: skip
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Traceback" not in server.log()
    faults = [
        line
        for line in server.access_lines()
        if (line["status"] or 0) >= 500 and line["problem"] != QUOTA_EXCEEDED
    ]
    assert not faults


PUBLIC_PATHS = {"/healthz", "/readyz", "/openapi.json", "/docs"}


def test_without_a_key_every_operation_answers_401(tmp_path: Path) -> None:
    """The same generated requests with no Authorization header (and the
    bad ones schemathesis tries): the document's own checks hold (401 is
    declared on every keyed operation), and every request to a keyed route
    or an unknown one was refused with 401, whatever its method, path or
    body, so none reached a handler. The failure limit is off here: it
    would turn the later ones into 429s (tests/app/test_access.py)."""
    server = start_server(tmp_path / "server", {"QUART_APP_AUTH_FAILURES_PER_MINUTE": "0"})
    try:
        result = schemathesis(
            server,
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance",
        )  # fmt: skip
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    # (a signed link needs no key: without a valid token it is a 403 by design)
    lines = [
        line
        for line in server.access_lines()
        if line["path"] not in PUBLIC_PATHS and not line["path"].startswith("/links/")
    ]
    assert lines, "schemathesis sent nothing"
    statuses = {line["status"] for line in lines if line["method"] != "OPTIONS"}
    assert statuses == {401}, statuses
    assert not [line for line in lines if line["key_id"] is not None]
