"""Small helpers that document responses for quart-schema's OpenAPI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from quart_schema import document_response

from ..problems import Problem

F = TypeVar("F", bound=Callable[..., Any])


def problems(*statuses: int) -> Callable[[F], F]:
    """Document each status as an RFC 9457 problem response."""

    def decorator(view: F) -> F:
        for status in statuses:
            view = document_response(Problem, status)(view)
        return view

    return decorator
