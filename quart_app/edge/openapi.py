"""The OpenAPI document: response helpers and quart-schema's provider,
corrected so the document says what the API really sends.

quart-schema documents every response as ``application/json`` and puts
response headers inside ``content`` (as if ``headers`` were a media type).
Here problems are ``application/problem+json``, 204s have no content, file
bytes are any media type, and headers sit on the response object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from quart import Quart
from quart_schema import QuartSchema, document_response, snake_to_kebab
from quart_schema.openapi import OpenAPIProvider

from quart_app.edge.problem_details import PROBLEM_CONTENT_TYPE
from quart_app.edge.problems import Problem
from quart_app.edge.schemas import FILE_ID_PATTERN, Binary, MetricsText, NoContent
from quart_app.state import app_state

F = TypeVar("F", bound=Callable[..., Any])


def problems(*statuses: int) -> Callable[[F], F]:
    """Document each status as an RFC 9457 problem response."""

    def decorator(view: F) -> F:
        for status in statuses:
            view = document_response(Problem, status)(view)
        return view

    return decorator


# Every operation that needs a key also answers these (edge/authentication.py).
AUTH_STATUSES = (401, 403, 429)
SECURITY_SCHEMES: dict[str, Any] = {"bearer": {"type": "http", "scheme": "bearer"}}


class ApiDocs(OpenAPIProvider):
    def build_paths(self, rule: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Each operation declares its security: none for public views, a
        Bearer API key (optional with open sign-up) for the rest, with the
        problems authentication answers."""
        paths, components = super().build_paths(rule)
        view = self._app.view_functions[rule.endpoint]
        settings = app_state(cast(Quart, self._app)).settings
        public = getattr(view, "public", False)
        anonymous = getattr(view, "anonymous_when", None)
        for path_object in paths.values():
            for method, operation in path_object.items():
                if public or method == "options":
                    operation["security"] = []
                    continue
                operation["security"] = [{"bearer": []}]
                if anonymous is not None and anonymous(settings):
                    operation["security"].append({})
                responses = operation.setdefault("responses", {})
                problem = next(
                    (r for code, r in responses.items() if str(code).startswith("4")), None
                )
                for status in AUTH_STATUSES:
                    if problem is not None:
                        responses.setdefault(status, problem)
        return paths, components

    def build_path_parameter(self, name: str, converter: Any) -> dict[str, Any]:
        parameter = super().build_path_parameter(name, converter)
        if name == "file_id":
            parameter["schema"]["pattern"] = FILE_ID_PATTERN
        return parameter

    def build_headers_parameters(self, model: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        # quart-schema looks for "required" on each property, where pydantic
        # never puts it; the model knows which headers are required.
        parameters, definitions = super().build_headers_parameters(model)
        fields = getattr(model, "model_fields", {})
        required = {snake_to_kebab(name) for name, f in fields.items() if f.is_required()}
        for parameter in parameters:
            if parameter["name"] in required:
                parameter["required"] = True
        return parameters, definitions

    def build_request_body(self, model: Any, source: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        body, definitions = super().build_request_body(model, source)
        body["required"] = True
        return body, definitions

    def build_response_object(
        self, model: Any, headers_model: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        response, definitions = super().build_response_object(model, headers_model)
        content = response["content"]
        headers = content.pop("headers", None)
        if headers:
            response["headers"] = headers
        schema = content.pop("application/json")["schema"]
        if model is Problem:
            content[PROBLEM_CONTENT_TYPE] = {"schema": schema}
        elif model is Binary:
            content["*/*"] = {"schema": {"type": "string", "format": "binary"}}
        elif model is MetricsText:
            content["text/plain"] = {"schema": {"type": "string"}}
        elif model is not NoContent:
            content["application/json"] = {"schema": schema}
        if not content:
            del response["content"]
        return response, definitions


def init_app(app: Quart) -> None:
    """The OpenAPI document at /openapi.json (Swagger UI at /docs is api/docs.py:
    quart-schema's page would load it from a CDN)."""
    QuartSchema(
        app,
        info={"title": "quart_app", "version": "0.1.0"},
        openapi_path="/openapi.json",
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
        openapi_provider_class=ApiDocs,
        security_schemes=SECURITY_SCHEMES,
    )
