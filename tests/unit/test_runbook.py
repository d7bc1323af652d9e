"""docs/RUNBOOK.md against the source: every problem type of the error
table is in its index (status and Retry-After as declared), each section
the index names exists, and every log line and startup line it quotes is
one the source writes (logger, and message up to the values filled in).
tests/app/test_runbook.py provokes the migration failure it quotes."""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path

import pytest

from devtools import PROJECT_ROOT
from quart_app.errors import problem_types
from quart_app.ops.startup import PREFIX

RUNBOOK = PROJECT_ROOT / "docs" / "RUNBOOK.md"
PACKAGE = PROJECT_ROOT / "quart_app"
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}
# Loggers whose lines are not ours to check: Hypercorn's own.
FOREIGN_LOGGERS = {"hypercorn.error"}


def runbook() -> str:
    return RUNBOOK.read_text()


def index_rows() -> dict[str, list[str]]:
    """The index table at the end: code -> its cells."""
    rows = {}
    for line in runbook().split("## Every problem type", 1)[1].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 5:
            rows[cells[0].strip("`")] = cells
    return rows


def test_every_problem_type_is_in_the_index_as_the_table_declares_it() -> None:
    rows = index_rows()
    for problem in problem_types():
        assert problem.code in rows, f"{problem.code} is not in docs/RUNBOOK.md's index"
        _, status, retry_after, _, client = rows[problem.code]
        assert status == str(problem.status), problem.code
        assert retry_after == (str(problem.retry_after) if problem.retry_after else "-")
        assert client, problem.code
    assert set(rows) == {p.code for p in problem_types()}


def test_every_section_the_index_names_exists() -> None:
    # A heading, or its part before a colon or a parenthesis ("Leases: a
    # tus upload, ...", "Blob unavailable (a file's bytes ...)").
    headings = re.findall(r"^## (.+)$", runbook(), flags=re.MULTILINE)
    names = {re.split(r":| \(", h)[0] for h in headings} | set(headings)
    for code, cells in index_rows().items():
        for section in cells[3].split("; "):
            assert section == "-" or section in names, (code, section)


def test_every_5xx_has_a_section() -> None:
    """Every condition an operator must act on has its first response."""
    for problem in problem_types():
        if problem.status >= 500:
            assert index_rows()[problem.code][3] != "-", problem.code


# -- quoted lines against the source ------------------------------------------------


def _pattern(node: ast.expr) -> str | None:
    """A regex for the strings an expression can make: a constant, an
    f-string (its values any text), or a %-format (its specifiers any text)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.sub(r"%[-#0 +]*\d*(?:\.\d+)?[sdrif]", "@ANY@", node.value)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                parts.append("@ANY@")
        return "".join(parts)
    return None


def _compile(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace("@ANY@", ".+"), flags=re.DOTALL)


def _telling(template: str) -> bool:
    """A template with text of its own: not "%s", not "{x}: {y}"."""
    return "@ANY@" not in template or len(re.sub(r"@ANY@|\W", "", template)) >= 15


@cache
def source_strings() -> tuple[list[re.Pattern[str]], set[str], list[re.Pattern[str]]]:
    """(every string the package can make, logger names, startup causes)."""
    strings: list[re.Pattern[str]] = []
    loggers: set[str] = {"quart_app"}  # app.logger: the app's import name
    causes: list[re.Pattern[str]] = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            pattern = _pattern(node) if isinstance(node, ast.expr) else None
            if pattern is not None and _telling(pattern):
                strings.append(_compile(pattern))
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            first = _pattern(node.args[0])
            if first is None:
                continue
            if name == "getLogger":
                loggers.add(first)
            elif name == "startup_step":  # "<what>: <cause>"
                causes.append(_compile(first + ": @ANY@"))
            elif name in ("StartupError", "ConfigError"):
                causes.append(_compile(first))
    return strings, loggers, causes


def quoted_log_lines() -> list[dict[str, object]]:
    lines = []
    for block in re.findall(r"```json\n(.*?)```", runbook(), flags=re.DOTALL):
        for line in block.splitlines():
            if line.strip().startswith("{"):
                lines.append(json.loads(line))
    return lines


def quoted_startup_lines() -> list[str]:
    return [
        line.strip()[len(PREFIX) :]
        for line in runbook().splitlines()
        if line.strip().startswith(PREFIX)
    ]


def test_the_runbook_quotes_log_lines_and_startup_lines() -> None:
    assert len(quoted_log_lines()) >= 15
    assert len(quoted_startup_lines()) >= 5


@pytest.mark.parametrize(
    "line", quoted_log_lines(), ids=lambda x: f"{x['logger']}: {str(x['message'])[:40]}"
)
def test_every_quoted_log_line_is_one_the_source_writes(line: dict[str, object]) -> None:
    strings, loggers, _ = source_strings()
    assert {"time", "level", "logger", "message"} <= set(line)
    assert line["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    if line["logger"] in FOREIGN_LOGGERS:
        return
    assert line["logger"] in loggers, line["logger"]
    message = str(line["message"])
    assert any(p.fullmatch(message) for p in strings), f"no source writes {message!r}"


@pytest.mark.parametrize("cause", quoted_startup_lines())
def test_every_quoted_startup_line_is_one_the_source_writes(cause: str) -> None:
    _, _, causes = source_strings()
    assert any(p.fullmatch(cause) for p in causes), f"no startup step says {cause!r}"


def test_a_message_the_source_does_not_write_is_caught() -> None:
    """The check above can fail: a made-up message matches nothing."""
    strings, loggers, causes = source_strings()
    assert not any(p.fullmatch("database exploded: completely") for p in strings)
    assert "quart_app.nonsense" not in loggers
    assert any(p.fullmatch("storage unwritable: [Errno 30] Read-only") for p in strings)
    assert not any(p.fullmatch("the storage is on fire") for p in causes)


def test_the_runbook_is_linked_from_the_readme() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert "docs/RUNBOOK.md" in readme
    assert Path(RUNBOOK).is_file()
