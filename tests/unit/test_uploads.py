"""tus headers parsed as pure functions: Upload-Metadata and Upload-Checksum."""

from __future__ import annotations

import base64
import hashlib

import pytest

from quart_app.edge.tus_headers import parse_checksum, parse_metadata
from quart_app.errors import InvalidInput


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_metadata_parsing() -> None:
    assert parse_metadata(f"filename {b64('ü.txt')},empty") == {"filename": "ü.txt", "empty": None}
    for bad in ("a\r\nb", "key a b", f"k {b64('x')},,j", "k !!!", f"k {b64('1')},k"):
        with pytest.raises(InvalidInput):
            parse_metadata(bad)


def test_checksum_parsing() -> None:
    digest = base64.b64encode(hashlib.sha1(b"x").digest()).decode()
    assert parse_checksum(f"sha1 {digest}") == ("sha1", hashlib.sha1(b"x").digest())
    for bad in (f"crc32 {digest}", "sha1 ###", f"sha256 {digest}"):
        with pytest.raises(InvalidInput):
            parse_checksum(bad)
