"""Request ids from clients, sanitised."""

from __future__ import annotations

from quart_app.edge.access_log import QUERY_MAX_CHARS, logged_query, sanitise_request_id


def test_sanitise_keeps_nothing_unsafe() -> None:
    assert sanitise_request_id(b"<script>") == "script"
    assert sanitise_request_id(b"\x00\x01") is None
    assert sanitise_request_id(None) is None


def test_query_values_with_secret_names_are_redacted() -> None:
    assert logged_query(b"") is None
    assert logged_query(b"limit=5&cursor=abc") == "limit=5&cursor=abc"
    assert logged_query(b"token=t&key=k&sig=s&password=p") == (
        "token=REDACTED&key=REDACTED&sig=REDACTED&password=REDACTED"
    )
    # S3 presigned parameters, whatever their case; names as sent, even encoded.
    assert logged_query(b"X-Amz-Credential=c&x-amz-date=d&X-Amz-Security-Token=t") == (
        "X-Amz-Credential=REDACTED&x-amz-date=REDACTED&X-Amz-Security-Token=REDACTED"
    )
    assert logged_query(b"api%5Fkey=k&API+KEY=k2") == "api%5Fkey=REDACTED&API+KEY=REDACTED"
    # A parameter without a value has nothing to hide; "signature" alone is kept.
    assert logged_query(b"signature&a=1") == "signature&a=1"


def test_the_logged_query_is_printable_and_bounded() -> None:
    assert logged_query(b"a=\x00\x1b[31m\xff") == "a=[31m"
    logged = logged_query(b"a=" + b"x" * 5000)
    assert logged is not None and len(logged) == QUERY_MAX_CHARS
