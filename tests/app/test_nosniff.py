"""Every JSON answer, success or problem, tells browsers not to sniff it."""

from __future__ import annotations

from typing import Any

from quart import Quart

from devtools.quart_client import as_quart_client
from quart_app import create_app

TUS = {"Tus-Resumable": "1.0.0"}
USER = {"name": "Ada", "email": "ada@example.com"}


def is_json(content_type: str) -> bool:
    mimetype = content_type.split(";", 1)[0].strip()
    return mimetype == "application/json" or mimetype.endswith("+json")


async def test_json_answers_and_problems_say_nosniff(overrides: dict[str, Any]) -> None:
    app: Quart = create_app(overrides)

    @app.get("/boom")
    async def boom() -> str:
        raise RuntimeError("an unexpected failure")

    async with app.test_app() as test_app:
        client = as_quart_client(test_app.test_client())
        upload = await client.post("/uploads", headers={**TUS, "Upload-Length": "3"})
        key = {"Idempotency-Key": "k1"}
        responses = [
            await client.post("/users", json=USER, headers=key),
            await client.post("/users", json=USER, headers=key),  # replayed
            await client.get("/users/1"),
            await client.get("/users?limit=1"),
            await client.put("/files/f", data=b"x"),
            await client.get("/files/f"),
            await client.get("/files"),
            await client.get(upload.headers["Location"], headers=TUS),
            upload,
            await client.get("/healthz"),
            await client.get("/readyz"),
            await client.get("/openapi.json"),
            await client.get("/users/999"),  # 404 problem
            await client.delete("/users"),  # 405 problem
            await client.post("/users", json={"name": ""}),  # 400 problem
            await client.post("/users", data="x"),  # 415 problem
            await client.post("/uploads", headers={"Upload-Length": "1"}),  # 412 problem
            await client.get("/files/f/content", headers={"Range": "bytes=9-"}),  # 416
            await client.get("/boom"),  # 500 problem
        ]
        for response in responses:
            assert is_json(response.headers["Content-Type"]), response
            assert response.headers.get("X-Content-Type-Options") == "nosniff", (
                response.status_code,
                response.headers["Content-Type"],
            )
        assert {r.status_code for r in responses} >= {200, 201, 400, 404, 405, 412, 415, 416, 500}
        assert responses[1].headers["Idempotent-Replayed"] == "true"
