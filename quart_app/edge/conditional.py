"""Validators, preconditions and ranges (RFC 9110 §8.8, §13, §14).

Pure functions of header values and the current state; the HTTP edge turns
their answers into 304, 412, 206 and 416.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

_ETAG = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


def strong_etag(sha256: str) -> str:
    return f'"{sha256}"'


def _tags(header: str) -> list[tuple[bool, str]] | None:
    """(weak, opaque-tag) pairs of a list header; None if it is ``*``."""
    if header.strip() == "*":
        return None
    tags = []
    position = 0
    while position < len(header):
        match = _ETAG.match(header, position)
        if match is None:
            break
        tags.append((match.group(1) is not None, match.group(2)))
        position = match.end()
    return tags


def if_match_passes(header: str | None, current: str | None) -> bool:
    """If-Match: strong comparison; ``*`` passes when the resource exists."""
    if header is None:
        return True
    tags = _tags(header)
    if tags is None:
        return current is not None
    return current is not None and any(not weak and tag == current for weak, tag in tags)


def if_none_match_passes(header: str | None, current: str | None) -> bool:
    """If-None-Match: weak comparison; fails when any tag matches (or ``*``
    and the resource exists)."""
    if header is None:
        return True
    tags = _tags(header)
    if tags is None:
        return current is None
    return current is None or all(tag != current for _, tag in tags)


def _http_date(value: str) -> datetime | None:
    """An HTTP-date with its zone, or None for anything else. A date that is
    not valid is ignored, never an error (RFC 9110 §13.1.3, §13.1.5); its
    parts may be of any size (a 20-digit year overflows the parser)."""
    try:
        date = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return date if date.tzinfo is not None else None


def not_modified_since(header: str | None, last_modified: datetime) -> bool:
    """If-Modified-Since: True when the representation is not newer."""
    since = None if header is None else _http_date(header)
    return since is not None and last_modified.replace(microsecond=0) <= since


class UnsatisfiableRange(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"no part of the {size} bytes was asked for")
        self.size = size


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # exclusive

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


_RANGE_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$", re.ASCII)
# A byte position of more digits than this is past any file we hold (and
# int() refuses numbers of over 4300 digits).
_MAX_DIGITS = 19


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else 2**64


def requested_range(
    header: str | None,
    size: int,
    if_range: str | None,
    etag: str,
    last_modified: datetime,
) -> ByteRange | None:
    """The one range to send, or None for the whole representation.

    Several ranges, a malformed header, another unit, or an If-Range that
    does not match mean the whole body (RFC 9110 lets a server ignore Range).
    Raises UnsatisfiableRange for a single range that lies past the end.
    """
    if header is None or not _if_range_matches(if_range, etag, last_modified):
        return None
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in specs:
        return None
    match = _RANGE_SPEC.match(specs)
    if match is None or match.group(0).strip() == "-":
        return None
    first, last = match.group(1), match.group(2)
    if first:
        start = _position(first)
        end = size if not last else _position(last) + 1
        if last and _position(last) < start:
            return None
        if start >= size:
            raise UnsatisfiableRange(size)
        return ByteRange(start, min(end, size))
    suffix = _position(last)
    if suffix == 0 or size == 0:
        raise UnsatisfiableRange(size)
    return ByteRange(max(size - suffix, 0), size)


def _if_range_matches(if_range: str | None, etag: str, last_modified: datetime) -> bool:
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith('"'):
        return value == etag
    if value.startswith("W/"):
        return False
    date = _http_date(value)
    return date is not None and date == last_modified.replace(microsecond=0)
