"""schemathesis against /openapi.json of a real Hypercorn: generated
requests (examples, coverage and fuzzing phases, bounded) must get no 5xx,
and every response must conform to the document: status code, content
type, headers and body schema.

Three checks are left out, each because the behaviour is right and the
check cannot know it: ``positive_data_acceptance`` (a schema-valid cursor
can still be forged, an Idempotency-Key can be reused with another body),
``negative_data_rejection`` and ``missing_required_header`` (tus answers a
missing or wrong Tus-Resumable with 412, which those checks do not expect).
Replay a failure with QUART_APP_FUZZ_SEED=<seed printed by schemathesis>.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devtools.server import RunningServer

SEED = os.environ.get("QUART_APP_FUZZ_SEED", "20261121")
EXAMPLES = os.environ.get("QUART_APP_FUZZ_EXAMPLES", "40")


def test_the_api_conforms_to_its_openapi_document(server: RunningServer) -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"), "--no-color", "run",
            f"{server.url}/openapi.json",
            "--checks", "all",
            "--exclude-checks",
            "positive_data_acceptance,negative_data_rejection,missing_required_header",
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
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Traceback" not in server.log()
    assert not [line for line in server.access_lines() if line["status"] >= 500]
