"""Hypercorn accepts unknown keys silently; this test does not."""

from __future__ import annotations

import tomllib

from hypercorn.config import Config

from devtools import PROJECT_ROOT

HYPERCORN_TOML = PROJECT_ROOT / "hypercorn.toml"


def test_every_key_is_one_hypercorn_defines() -> None:
    keys = tomllib.loads(HYPERCORN_TOML.read_text())
    unknown = [key for key in keys if not hasattr(Config, key)]
    assert unknown == []


def test_the_documented_settings_are_present_and_load() -> None:
    keys = tomllib.loads(HYPERCORN_TOML.read_text())
    for key in (
        "bind",
        "workers",
        "worker_class",
        "keep_alive_timeout",
        "graceful_timeout",
        "errorlog",
        "h2_max_concurrent_streams",
    ):
        assert key in keys, key
    # The app's connection idle timeout replaces it (quart_app/edge/server_internals.py).
    assert "read_timeout" not in keys
    config = Config.from_toml(HYPERCORN_TOML)
    assert config.bind == ["127.0.0.1:8000"]
    assert config.worker_class == "asyncio"


def test_every_key_has_a_comment() -> None:
    lines = HYPERCORN_TOML.read_text().splitlines()
    for index, line in enumerate(lines):
        if line and not line.startswith("#") and "=" in line:
            assert lines[index - 1].startswith("#"), f"no comment above {line!r}"
