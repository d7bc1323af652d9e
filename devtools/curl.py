"""Driving a running server with the curl command line, as the README does."""

from __future__ import annotations

import subprocess

from devtools.auth import TEST_ADMIN_KEY


def curl(*args: str, key: str | None = TEST_ADMIN_KEY) -> tuple[int, dict[str, str], str]:
    """Run curl with ``-H "Authorization: Bearer <key>"`` (``key=None``: no
    key); return status, lower-cased headers and body."""
    auth = ["-H", f"Authorization: Bearer {key}"] if key is not None else []
    result = subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "20", *auth, *args],
        capture_output=True,
        text=True,
        errors="replace",
        check=True,
    )
    text = result.stdout.replace("\r\n", "\n")
    head, _, body = text.partition("\n\n")
    while head.startswith("HTTP/") and head.split()[1].startswith("1"):
        head, _, body = body.partition("\n\n")  # an interim 100 Continue
    lines = head.split("\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body
