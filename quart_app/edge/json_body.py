"""Reading a JSON request body into a pydantic model, strictly.

Stock ``request.get_json`` accepts duplicate keys (last wins), NaN, and turns
very deep nesting into a RecursionError (a 500). Here each of those, invalid
UTF-8 and a wrong media type become a clear 4xx problem.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from quart import request

from quart_app.edge.idempotency import observe_body
from quart_app.errors import InvalidInput, MalformedBody, UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)
MAX_DEPTH = 32


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise MalformedBody(f"The JSON object has the member {key!r} more than once.")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise MalformedBody(f"{name} is not valid JSON.")


def _depth(text: str) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBody("The request body is not valid UTF-8.") from None
    if _depth(text) > MAX_DEPTH:
        raise MalformedBody(f"The JSON is nested deeper than {MAX_DEPTH} levels.")
    try:
        return json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except ValueError as error:
        # json.JSONDecodeError, and int() refusing a number of over 4300 digits.
        raise MalformedBody(f"The request body is not valid JSON: {error}") from None


def validation_errors(error: ValidationError) -> list[dict[str, Any]]:
    return [
        {
            "field": ".".join(str(part) for part in item["loc"]) or "(body)",
            "message": item["msg"],
            "type": item["type"],
        }
        for item in error.errors(include_url=False, include_context=False, include_input=False)
    ]


async def read_model(model: type[M], *, optional: bool = False) -> M:
    """The body as ``model``. ``optional``: a request with no body and no
    Content-Type gets the model's defaults."""
    mimetype = request.mimetype
    is_json = mimetype == "application/json" or mimetype.endswith("+json")
    unsupported = UnsupportedMediaType(
        f"Send the body as application/json, not {mimetype or 'no Content-Type'}."
    )
    if not is_json and not (optional and not mimetype):
        raise unsupported
    raw = await request.get_data(False, False, False)
    observe_body(raw)
    if not is_json:
        if raw:
            raise unsupported
        return model()
    data = parse_json(raw)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        errors = validation_errors(error)
        fields = ", ".join(sorted({e["field"] for e in errors}))
        raise InvalidInput(f"Invalid fields: {fields}.", errors=errors) from None
