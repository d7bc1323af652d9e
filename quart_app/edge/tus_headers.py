"""tus 1.0.0 protocol pieces (tus/tus-resumable-upload-protocol, protocol.md):
header parsing and the constants servers advertise. No I/O here."""

from __future__ import annotations

import base64
import binascii

from quart_app.errors import InvalidInput
from quart_app.services.resumable_uploads import CHECKSUM_ALGORITHMS

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = (
    "creation,creation-with-upload,creation-defer-length,termination,checksum,expiration"
)
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"


def _invalid(header: str, message: str) -> InvalidInput:
    return InvalidInput(f"{header}: {message}", errors=[{"field": header, "message": message}])


def parse_count(header: str, value: str | None) -> int | None:
    """A non-negative integer header (Upload-Length, Upload-Offset)."""
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        raise _invalid(header, "must be a non-negative integer")
    return int(value)


def parse_metadata(value: str | None) -> dict[str, str | None]:
    """Upload-Metadata: comma-separated ``key base64value`` pairs (the value
    may be absent). Keys are unique ASCII without spaces or commas."""
    if value is None or not value.strip():
        return {}
    if "\r" in value or "\n" in value:
        raise _invalid("Upload-Metadata", "must not contain CR or LF")
    result: dict[str, str | None] = {}
    for pair in value.split(","):
        parts = pair.strip().split(" ")
        key = parts[0]
        if not key or not key.isascii() or len(parts) > 2:
            raise _invalid("Upload-Metadata", f"malformed pair {pair.strip()!r}")
        if key in result:
            raise _invalid("Upload-Metadata", f"key {key!r} given twice")
        if len(parts) == 1:
            result[key] = None
            continue
        try:
            result[key] = base64.b64decode(parts[1], validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise _invalid("Upload-Metadata", f"value of {key!r} is not base64 UTF-8") from None
    return result


def parse_checksum(value: str | None) -> tuple[str, bytes] | None:
    """Upload-Checksum: ``algorithm base64digest``."""
    if value is None:
        return None
    name, _, encoded = value.strip().partition(" ")
    name = name.lower()
    if name not in CHECKSUM_ALGORITHMS:
        supported = ", ".join(CHECKSUM_ALGORITHMS)
        raise _invalid("Upload-Checksum", f"algorithm {name!r} is not one of {supported}")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("Upload-Checksum", "the digest is not base64") from None
    if len(digest) != CHECKSUM_ALGORITHMS[name]().digest_size:
        raise _invalid("Upload-Checksum", f"the digest has the wrong length for {name}")
    return name, digest
