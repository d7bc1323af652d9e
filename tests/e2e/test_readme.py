"""The README's shell sessions run against a fresh server and answer what
the README prints (devtools/readme_sessions.py), so it cannot drift."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devtools.readme_sessions import README, run_session, sessions

SESSIONS = sessions(README.read_text())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("session", SESSIONS, ids=[f"line-{s.commands[0].line}" for s in SESSIONS])
def test_a_readme_session_answers_what_the_readme_shows(session: object, tmp_path: Path) -> None:
    from devtools.readme_sessions import Session

    assert isinstance(session, Session)
    problems = [
        f"README.md:{result.command.line}: {problem}"
        for result in run_session(session, tmp_path)
        for problem in result.problems
    ]
    assert not problems, "\n".join(problems)


def test_the_readme_has_sessions() -> None:
    assert len(SESSIONS) >= 5
