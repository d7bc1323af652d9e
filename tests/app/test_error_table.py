"""errors.py is the one table of problem types: every domain error declares
its type, status and title; Werkzeug's errors, the hand-sent 503s and the
README say the same; no view builds a problem document itself."""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
from werkzeug import exceptions as http

from quart_app import errors
from quart_app.edge import bodies, connection_limits, server_internals
from quart_app.edge.problem_details import TYPE_PREFIX
from quart_app.edge.problems import SAME_CONDITION
from quart_app.errors import DomainError

PACKAGE = Path(errors.__file__).parent
README = PACKAGE.parent / "README.md"


def domain_error_classes() -> list[type[DomainError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, DomainError) and cls is not DomainError
    ]


def test_every_domain_error_declares_code_status_title() -> None:
    classes = domain_error_classes()
    assert set(classes) == set(errors.error_classes())
    for cls in classes:
        assert re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", cls.code), cls
        assert isinstance(cls.status, int) and 400 <= cls.status <= 599, cls
        assert isinstance(cls.title, str) and cls.title.strip(), cls
        assert cls.retry_after is None or (
            isinstance(cls.retry_after, int) and cls.retry_after > 0
        ), cls
        if cls.status >= 500:
            assert cls.retry_after is not None, f"{cls.__name__}: a 5xx says when to retry"


def test_codes_are_unique_and_problem_types_lists_each_once() -> None:
    codes = [cls.code for cls in domain_error_classes()]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    listed = errors.problem_types()
    assert sorted(t.code for t in listed) == sorted(codes)
    by_code = {cls.code: cls for cls in domain_error_classes()}
    for entry in listed:
        cls = by_code[entry.code]
        assert (entry.status, entry.title, entry.retry_after) == (
            cls.status,
            cls.title,
            cls.retry_after,
        )


def test_an_error_carries_its_headers_and_members() -> None:
    error = errors.RangeNotSatisfiable("outside", headers={"Content-Range": "bytes */3"})
    assert error.headers == {"Content-Range": "bytes */3"}
    assert (error.detail, error.members) == ("outside", {})
    assert errors.NotFound("gone", extra=1).headers == {}


def test_werkzeug_statuses_map_to_an_error_of_the_same_status() -> None:
    for status, cls in SAME_CONDITION.items():
        assert cls.status == status, cls
        assert status in http.default_exceptions, status


def test_the_hand_sent_connection_refusal_is_the_tables_problem() -> None:
    head, _, body = connection_limits.refusal().partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    error = errors.TooManyConnections
    assert lines[0] == f"HTTP/1.1 {error.status} Service Unavailable"
    assert fields["content-type"] == "application/problem+json"
    assert int(fields["content-length"]) == len(body)
    assert fields["retry-after"] == str(error.retry_after)
    assert fields["connection"] == "close"
    assert_table_shape(json.loads(body), error)


async def test_the_hand_sent_shutdown_answer_is_the_tables_problem() -> None:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await server_internals._send_shutting_down(send)
    start, body = sent
    headers = dict(start["headers"])
    assert start["status"] == errors.ShuttingDown.status
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"retry-after"] == str(errors.ShuttingDown.retry_after).encode()
    assert_table_shape(json.loads(body["body"]), errors.ShuttingDown)


def test_a_body_ended_by_shutdown_raises_the_same_error() -> None:
    body = bodies.BoundedBody(None, None)
    body.end_for_shutdown()
    with pytest.raises(errors.ShuttingDown):
        body.raise_if_failed()


def assert_table_shape(problem: dict[str, Any], error: type[DomainError]) -> None:
    assert problem["type"] == TYPE_PREFIX + error.code
    assert (problem["title"], problem["status"]) == (error.title, error.status)
    assert problem["detail"]


# -- no problem documents built anywhere but the edge's renderer ---------------


def test_no_view_builds_a_problem_document() -> None:
    """Views raise domain errors; the edge renders them."""
    renderers = re.compile(
        r"\b(problem_response|domain_problem|blank_problem|http_problem|problem_document|"
        r"raw_problem)\b|quart_app\.edge\.(problems|problem_details)\b"
    )
    for path in sorted((PACKAGE / "api").glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not renderers.search(line), f"{path.name}:{number}: {line.strip()}"


def string_literals(path: Path) -> list[str]:
    """The module's string constants, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_problem_types_are_spelled_only_by_the_renderer() -> None:
    """No module writes a problem type or about:blank itself: the hand-sent
    problems too go through problem_details with an error from the table."""
    renderer = PACKAGE / "edge" / "problem_details.py"
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == renderer:
            continue
        for literal in string_literals(path):
            for spelled in ("urn:quart-app:problem", "about:blank"):
                assert spelled not in literal, f"{path.relative_to(PACKAGE)}: {literal!r}"


# -- the README's table is the table -------------------------------------------


def readme_problem_types() -> list[tuple[str, int, str, int | None]]:
    text = README.read_text()
    section = text[text.index("### Errors") :]
    section = section[: section.index("\n### ", 1)]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| (\d+) \| (.+?) \| (\d+|-) \|$", section, re.M)
    return [
        (code, int(status), title, None if retry == "-" else int(retry))
        for code, status, title, retry in rows
    ]


def test_the_readme_lists_every_problem_type() -> None:
    assert readme_problem_types() == [tuple(t) for t in errors.problem_types()]
