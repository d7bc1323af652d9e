from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from quart import Quart, Response
from quart.testing import QuartClient

from devtools.stored import count_rows
from quart_app.db.models import User

# Also on PostgreSQL by default (tests/conftest.py).
pytestmark = pytest.mark.postgresql


async def count_users(app: Quart) -> int:
    return await count_rows(app, User)


async def post_user(client: QuartClient, body: Any, **kwargs: Any) -> Response:
    return await client.post("/users", json=body, **kwargs)


async def test_create_answers_201_with_location_and_the_user(client: QuartClient) -> None:
    response = await post_user(client, {"name": "  Ada Lovelace ", "email": "Ada@Example.COM"})
    assert response.status_code == 201
    body = await response.get_json()
    assert body["name"] == "Ada Lovelace"
    assert body["email"] == "ada@example.com"
    assert isinstance(body["id"], int)
    assert body["created_at"].endswith("Z")
    assert response.headers["Location"] == f"http://localhost/users/{body['id']}"
    again = await client.get(f"/users/{body['id']}")
    assert again.status_code == 200
    assert await again.get_json() == body


async def test_unknown_user_is_a_404_problem(client: QuartClient) -> None:
    response = await client.get("/users/999")
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"


async def test_validation_names_each_bad_field_and_stores_nothing(
    app: Quart, client: QuartClient
) -> None:
    response = await post_user(client, {"name": "   ", "email": "not-an-email", "extra": 1})
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    problem = await response.get_json()
    assert {e["field"] for e in problem["errors"]} == {"name", "email", "extra"}
    assert problem["status"] == 400 and problem["title"] and problem["type"]
    assert await count_users(app) == 0


async def test_missing_fields_and_wrong_types_are_400(client: QuartClient) -> None:
    body: object
    for body in ({}, {"name": "A"}, {"name": 5, "email": "a@b.co"}, [], "x", None):
        response = await post_user(client, body)
        assert response.status_code == 400, body
        assert (await response.get_json())["errors"]


async def test_name_length_is_bounded(client: QuartClient) -> None:
    ok = await post_user(client, {"name": "x" * 200, "email": "a@example.com"})
    assert ok.status_code == 201
    too_long = await post_user(client, {"name": "x" * 201, "email": "b@example.com"})
    assert too_long.status_code == 400


async def test_malformed_json_is_400(client: QuartClient) -> None:
    for raw in (
        b"{",
        b'{"name": "a", "name": "b", "email": "a@b.co"}',
        b"\xff\xfe",
        b"NaN",
        b"[" * 100 + b"]" * 100,
        b'{"n": 1' + b"0" * 5000 + b"}",
    ):
        response = await client.post(
            "/users", data=raw, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, raw[:20]
        assert response.content_type == "application/problem+json"


async def test_not_json_is_415(app: Quart, client: QuartClient) -> None:
    response = await client.post("/users", form={"name": "a", "email": "a@b.co"})
    assert response.status_code == 415
    assert response.content_type == "application/problem+json"
    assert await count_users(app) == 0


async def test_json_body_over_the_limit_is_413(overrides: dict[str, Any]) -> None:
    from quart_app import create_app

    app = create_app({**overrides, "MAX_JSON_BYTES": 100})
    async with app.test_app() as test_app:
        response = await test_app.test_client().post(
            "/users",
            data=json.dumps({"name": "x" * 200, "email": "a@b.co"}),
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 413
    assert response.content_type == "application/problem+json"


async def test_taken_email_in_any_case_is_409_naming_the_existing_user(
    app: Quart, client: QuartClient
) -> None:
    first = await post_user(client, {"name": "A", "email": "same@example.com"})
    second = await post_user(client, {"name": "B", "email": "SAME@example.com"})
    assert second.status_code == 409
    problem = await second.get_json()
    assert problem["existing"] == first.headers["Location"]
    assert await count_users(app) == 1


async def test_concurrent_creates_with_one_email_give_one_201(
    app: Quart, client: QuartClient
) -> None:
    responses = await asyncio.gather(
        *(post_user(client, {"name": f"n{i}", "email": "race@example.com"}) for i in range(20))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19
    assert await count_users(app) == 1


async def test_paging_visits_every_user_once_while_users_are_added(
    client: QuartClient,
) -> None:
    for i in range(25):
        await post_user(client, {"name": f"u{i}", "email": f"u{i}@example.com"})
    seen: list[int] = []
    url: str | None = "/users?limit=7"
    added = 0
    pages = 0
    while url:
        response = await client.get(url)
        assert response.status_code == 200
        page = await response.get_json()
        seen.extend(item["id"] for item in page["items"])
        pages += 1
        if page["next"]:
            assert response.headers["Link"] == f'<{page["next"]}>; rel="next"'
        else:
            assert "Link" not in response.headers
        if added < 3:
            await post_user(client, {"name": "late", "email": f"late{added}@example.com"})
            added += 1
        url = page["next"]
    assert len(seen) == len(set(seen))
    assert set(range(1, 26)) <= set(seen)
    assert pages >= 4


async def test_default_page_size_is_20(client: QuartClient) -> None:
    for i in range(21):
        await post_user(client, {"name": "u", "email": f"p{i}@example.com"})
    page = await (await client.get("/users")).get_json()
    assert len(page["items"]) == 20
    assert page["next"]


async def test_bad_limit_or_forged_cursor_is_400(client: QuartClient) -> None:
    await post_user(client, {"name": "u", "email": "c@example.com"})
    await post_user(client, {"name": "v", "email": "d@example.com"})
    page = await (await client.get("/users?limit=1")).get_json()
    cursor = page["next"].split("cursor=")[1]
    payload, signature = cursor.split(".")
    for query in (
        "limit=0",
        "limit=101",
        "limit=x",
        "limit=-1",
        "cursor=junk",
        f"cursor={payload}.AAAA",
        f"cursor={payload[:-2]}xx.{signature}",
    ):
        response = await client.get(f"/users?{query}")
        assert response.status_code == 400, query
        assert response.content_type == "application/problem+json"
