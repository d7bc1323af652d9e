"""The doctor's estimate of an admin key's strength (ops/doctor.py)."""

from __future__ import annotations

import secrets

import pytest

from quart_app.ops.doctor import ADMIN_KEY_MIN_BITS, key_strength_bits


def test_random_keys_are_strong() -> None:
    for _ in range(200):
        assert key_strength_bits("qa_" + secrets.token_urlsafe(32)) > ADMIN_KEY_MIN_BITS
        assert key_strength_bits(secrets.token_hex(32)) > ADMIN_KEY_MIN_BITS


@pytest.mark.parametrize(
    "key",
    [
        "",
        "a" * 64,
        "password" * 5,
        "abcdefghijklmnopqrstuvwxyz0123456789",
        "qa_test-admin-key-0123456789abcdefghij",  # devtools/auth.py's
        "correcthorsebatterystaple" * 2,
    ],
)
def test_patterns_are_weak(key: str) -> None:
    assert key_strength_bits(key) < ADMIN_KEY_MIN_BITS
