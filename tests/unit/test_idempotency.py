"""Idempotency-Key values, quoted (structured-field string) or bare."""

from __future__ import annotations

import pytest

from quart_app.edge.idempotency import parse_key
from quart_app.errors import InvalidInput


@pytest.mark.parametrize(
    ("raw", "key"),
    [('"abc"', "abc"), ("abc", "abc"), ('"a\\"b"', 'a"b'), ('"a\\\\b"', "a\\b"),
     ("  padded ", "padded"), ("x" * 255, "x" * 255)],
)  # fmt: skip
def test_keys_quoted_or_bare(raw: str, key: str) -> None:
    assert parse_key(raw) == key


@pytest.mark.parametrize(
    "raw", ["", '""', '"abc', '"a"b"', '"a\\nb"', "x" * 256, "sp ace", "é", '"\\"'],
)  # fmt: skip
def test_bad_keys(raw: str) -> None:
    with pytest.raises(InvalidInput):
        parse_key(raw)
