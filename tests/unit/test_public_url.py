"""QUART_APP_PUBLIC_URL values, parsed."""

from __future__ import annotations

import pytest

from quart_app.edge.public_url import PublicUrl


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://files.example.com", PublicUrl("https", "files.example.com", "")),
        ("HTTPS://Files.Example.com:8443/", PublicUrl("https", "files.example.com:8443", "")),
        ("http://10.0.0.1/a/b/", PublicUrl("http", "10.0.0.1", "/a/b")),
        ("https://x.example/my%20files", PublicUrl("https", "x.example", "/my files")),
        ("", None),
    ],
)
def test_public_urls_parse(text: str, expected: PublicUrl | None) -> None:
    assert PublicUrl.parse(text) == expected
