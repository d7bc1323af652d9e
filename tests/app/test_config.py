"""A bad setting stops create_app, naming its variable."""

from __future__ import annotations

import pytest

from quart_app import create_app
from quart_app.config import ConfigError


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("QUART_APP_MAX_UPLOAD_BYTES", "lots"),
        ("QUART_APP_MAX_UPLOAD_BYTES", "-1"),
        ("QUART_APP_AUTO_MIGRATE", "maybe"),
        ("QUART_APP_BODY_IDLE_TIMEOUT", "0"),
        ("QUART_APP_LOG_LEVEL", "LOUD"),
    ],
)
def test_a_bad_value_stops_startup_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        create_app()
