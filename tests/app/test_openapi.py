from __future__ import annotations

import re

from quart import Quart
from quart.testing import QuartClient

# The API description itself and the browser pages (api/page.py, api/docs.py).
UNDOCUMENTED = {"/openapi.json", "/docs", "/", "/static/<path:name>"}


def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


async def test_every_endpoint_is_documented_with_success_and_errors(
    app: Quart, client: QuartClient
) -> None:
    spec = await (await client.get("/openapi.json")).get_json()
    for rule in app.url_map.iter_rules():
        if rule.rule in UNDOCUMENTED:
            continue
        path = spec["paths"].get(openapi_path(rule.rule))
        assert path is not None, rule.rule
        assert rule.methods is not None, rule.rule
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = path[method.lower()]
            codes = set(operation["responses"])
            assert any(c.startswith("2") for c in codes), (rule.rule, method)
            if rule.rule not in ("/healthz",):
                assert any(c.startswith("4") or c.startswith("5") for c in codes), (
                    rule.rule,
                    method,
                )


async def test_docs_page_is_served(client: QuartClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "openapi.json" in (await response.get_data(as_text=True))


async def test_the_document_says_what_is_sent(client: QuartClient) -> None:
    """Problems as application/problem+json, headers on the response (not
    as a media type), no content for 204, file bytes as any type, required
    request bodies and headers marked so."""
    spec = await (await client.get("/openapi.json")).get_json()
    post_users = spec["paths"]["/users"]["post"]
    assert list(post_users["responses"]["409"]["content"]) == ["application/problem+json"]
    created = post_users["responses"]["201"]
    assert list(created["content"]) == ["application/json"]
    assert "location" in created["headers"]
    assert post_users["requestBody"]["required"] is True
    delete = spec["paths"]["/files/{file_id}"]["delete"]["responses"]["204"]
    assert "content" not in delete
    content = spec["paths"]["/files/{file_id}/content"]["get"]["responses"]["200"]
    assert list(content["content"]) == ["*/*"]
    patch = spec["paths"]["/uploads/{upload_id}"]["patch"]["parameters"]
    required = {p["name"] for p in patch if p.get("required")}
    assert {"tus-resumable", "upload-offset"} <= required
    put = spec["paths"]["/files/{file_id}"]["put"]["parameters"]
    assert [p["schema"]["pattern"] for p in put if p["name"] == "file_id"]


async def test_every_operation_declares_its_security(client: QuartClient) -> None:
    """Bearer keys on every operation but the public ones, which say so
    with an empty list; keyed operations document 401, 403 and 429."""
    spec = await (await client.get("/openapi.json")).get_json()
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    public = {"/healthz", "/readyz", "/links/{token}"}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if path in public or method == "options":
                assert operation["security"] == [], (path, method)
                continue
            assert operation["security"] == [{"bearer": []}], (path, method)
            assert {"401", "403", "429"} <= set(operation["responses"]), (path, method)


async def test_with_open_signup_creating_a_user_needs_no_key(
    overrides: dict[str, object],
) -> None:
    from quart_app import create_app

    app = create_app({**overrides, "OPEN_SIGNUP": True})
    async with app.test_app():
        spec = await (await app.test_client().get("/openapi.json")).get_json()
    assert spec["paths"]["/users"]["post"]["security"] == [{"bearer": []}, {}]
    assert spec["paths"]["/users"]["get"]["security"] == [{"bearer": []}]
