"""Preconditions and ranges as pure functions of header values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from quart_app.edge.conditional import ByteRange, not_modified_since, requested_range

MODIFIED = datetime(2026, 11, 21, 6, 15, 40, 123456, tzinfo=UTC)
HTTP_DATE = "Sat, 21 Nov 2026 06:15:40 GMT"
ETAG = '"abc"'

# Not HTTP-dates: RFC 9110 §13.1.3 and §13.1.5 say to ignore them. Parts of
# any size must not reach the parser's C integers (OverflowError).
NOT_DATES = [
    "Mon, 01 Jan 10000000000000000000 00:00:00 GMT",
    "Mon, 99999999999999999999 Jan 2001 00:00:00 GMT",
    "Mon, 01 Jan 2001 99999999999999999999:00:00 GMT",
    "Mon, 01 Jan 2001 00:00:00 +99999999999999999999",
    "Mon, 01 Jan 2001 00:00:00 +9999",
    "Mon, 31 Feb 2001 00:00:00 GMT",
    "Mon, 01 Jan 2001 00:00:60 GMT",
    "01 Jan 2001 00:00:00 -0000",  # no zone: not a point in time
    "yesterday",
    "",
    "9" * 5000,
]


@pytest.mark.parametrize("header", NOT_DATES)
def test_if_modified_since_that_is_not_a_date_is_ignored(header: str) -> None:
    assert not_modified_since(header, MODIFIED) is False


@pytest.mark.parametrize("header", NOT_DATES)
def test_if_range_that_is_not_a_date_sends_the_whole_body(header: str) -> None:
    assert requested_range("bytes=0-9", 100, header, ETAG, MODIFIED) is None


def test_dates_that_are_dates() -> None:
    assert not_modified_since(HTTP_DATE, MODIFIED) is True
    assert not_modified_since("Sat, 21 Nov 2026 06:15:39 GMT", MODIFIED) is False
    assert not_modified_since(None, MODIFIED) is False
    assert requested_range("bytes=0-9", 100, HTTP_DATE, ETAG, MODIFIED) == ByteRange(0, 10)
    assert requested_range("bytes=0-9", 100, ETAG, ETAG, MODIFIED) == ByteRange(0, 10)
    assert requested_range("bytes=0-9", 100, '"stale"', ETAG, MODIFIED) is None
