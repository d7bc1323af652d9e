"""Request ids from clients, sanitised."""

from __future__ import annotations

from quart_app.edge.access_log import sanitise_request_id


def test_sanitise_keeps_nothing_unsafe() -> None:
    assert sanitise_request_id(b"<script>") == "script"
    assert sanitise_request_id(b"\x00\x01") is None
    assert sanitise_request_id(None) is None
