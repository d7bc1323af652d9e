"""Hypercorn accepts unknown keys silently; this test does not."""

from __future__ import annotations

import asyncio
import json
import logging
import tomllib

import pytest
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
        if line.startswith("["):
            # Hypercorn's keys are done; what follows are the tables of one
            # key (logconfig_dict, logging's own schema), commented above it.
            assert lines[index - 1].startswith("#"), f"no comment above {line!r}"
            break
        if line and not line.startswith("#") and "=" in line:
            assert lines[index - 1].startswith("#"), f"no comment above {line!r}"


def test_hypercorns_own_log_is_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """The logconfig_dict turns Hypercorn's error log into the app's JSON
    lines (tests/e2e/test_logs.py reads them from a real server)."""
    config = Config.from_toml(HYPERCORN_TOML)
    try:
        assert config.log.error_logger is logging.getLogger("hypercorn.error")
        asyncio.run(config.log.info("Running on http://%s (CTRL + C to quit)", "127.0.0.1:1"))
        line = json.loads(capsys.readouterr().err.splitlines()[-1])
        assert line["logger"] == "hypercorn.error"
        assert line["level"] == "INFO"
        assert line["message"] == "Running on http://127.0.0.1:1 (CTRL + C to quit)"
        assert config.log.access_logger is None  # the app's access line is the only one
    finally:
        for name in ("hypercorn.error", "asyncio"):
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = [], True
