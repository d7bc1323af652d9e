"""Set-up: `make run` installs the runtime dependencies alone and says what
it does; `make test` adds the test extras; the CLI's help, as an operator
runs it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from devtools import PROJECT_ROOT


def dependency_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def dry_run(tmp_path: Path, target: str) -> list[str]:
    """What make would run for ``target`` on a fresh clone (-B: as if
    nothing were built; -n: nothing is run), in a venv under tmp_path."""
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "-n", "-B", f"VENV={venv}", target.replace(".venv", str(venv))],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout.splitlines()


def test_make_run_installs_no_test_tools(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, "run")
    installs = [x for x in lines if re.match(r"\S*pip install .*-e ", x)]
    assert installs == [f"{tmp_path / 'venv'}/bin/pip install --quiet -e ."]
    assert not any("[test]" in x for x in lines)
    # It says what it does before each step.
    said = [x for x in lines if x.startswith('echo "== ')]
    for words in ("creating the virtual environment", "runtime dependencies", "migrating"):
        assert any(words in x for x in said), said
    assert any("serving on http://127.0.0.1:8000" in x for x in lines)
    # ... and the runtime dependencies hold no test-only package.
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    runtime = {dependency_name(d) for d in project["dependencies"]}
    test_only = {dependency_name(d) for d in project["optional-dependencies"]["test"]}
    assert {"pytest", "httpx", "ruff", "mypy", "tuspy"} <= test_only
    assert runtime & test_only == set()


def test_make_test_adds_the_test_extras(tmp_path: Path) -> None:
    lines = dry_run(tmp_path, ".venv/.installed")
    installs = [x for x in lines if re.match(r"\S*pip install .*-e ", x)]
    assert installs == [f"{tmp_path / 'venv'}/bin/pip install --quiet -e '.[test]'"]


def test_help_from_the_command_line() -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "quart_app", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    for command in ("serve", "migrate", "doctor", "smoke", "check", "users", "keys"):
        assert re.search(rf"^    {command} +\S", listing, re.MULTILINE), listing
    serve = subprocess.run(
        [sys.executable, "-m", "quart_app", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert "--workers" in serve
