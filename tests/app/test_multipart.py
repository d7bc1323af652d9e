from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.testing import QuartClient

from devtools.form_data import BOUNDARY, multipart, multipart_headers, part
from devtools.quart_client import as_http_connection
from devtools.stored import assert_nothing_stored
from quart_app import create_app


async def send_in_pieces(client: QuartClient, body: bytes, sizes: list[int]) -> tuple[int, Any]:
    async with as_http_connection(
        client.request("/files", method="POST", headers=multipart_headers())
    ) as conn:
        position = 0
        index = 0
        while position < len(body):
            size = sizes[index % len(sizes)]
            await conn.send(body[position : position + size])
            position += size
            index += 1
        await conn.send_complete()
        data = await conn.receive()
    import json

    assert conn.status_code is not None
    return conn.status_code, json.loads(data)


async def stored_bytes(app: Quart, client: QuartClient, body: dict[str, Any]) -> bytes:
    response = await client.get(f"/files/{body['id']}/content")
    return await response.get_data(as_text=False)


@pytest.mark.parametrize("size", [1, 2, 5, 7])
async def test_bytes_survive_any_chunking(app: Quart, client: QuartClient, size: int) -> None:
    data = os.urandom(3000) + b"\r\n--" + BOUNDARY.encode()[:-1] + b"\r\n\r\n--"
    body = multipart(part("file", data, "a.bin"))
    status, created = await send_in_pieces(client, body, [size])
    assert status == 201, created
    assert created["sha256"] == hashlib.sha256(data).hexdigest()
    assert await stored_bytes(app, client, created) == data


async def test_split_between_the_dashes_of_the_closing_boundary(
    app: Quart, client: QuartClient
) -> None:
    data = os.urandom(100_000) + b"\r"
    body = multipart(part("file", data, "a.bin"))
    closing = body.rindex(f"--{BOUNDARY}--".encode())
    split = closing + len(BOUNDARY) + 3  # between the two trailing dashes
    assert body[split - 1 : split + 1] == b"--"
    status, created = await send_in_pieces(client, body, [split, len(body) - split])
    assert status == 201
    assert created["sha256"] == hashlib.sha256(data).hexdigest()
    assert await stored_bytes(app, client, created) == data


async def test_text_fields_beside_the_file_are_accepted(client: QuartClient) -> None:
    body = multipart(part("note", b"hello"), part("file", b"data", "a.txt", "text/plain"))
    response = await client.post("/files", data=body, headers=multipart_headers())
    assert response.status_code == 201
    assert (await response.get_json())["content_type"] == "text/plain"


def malformed_bodies() -> dict[str, tuple[bytes, dict[str, str], int]]:
    good = part("file", b"data", "a.txt")
    headers = multipart_headers()
    return {
        "no boundary parameter": (multipart(good), {"Content-Type": "multipart/form-data"}, 400),
        "wrong boundary": (multipart(good), multipart_headers("otherboundary"), 400),
        "no closing boundary": (good, headers, 400),
        "truncated in a part": (good[:-10], headers, 400),
        "part without content-disposition": (
            f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
            headers,
            400,
        ),
        "no file part": (multipart(part("note", b"x")), headers, 400),
        "file part without filename": (multipart(part("file", b"x")), headers, 400),
        "nested multipart": (
            multipart(part("file", b"--x--", "a", "multipart/mixed; boundary=x")),
            headers,
            400,
        ),
        "huge part headers": (
            f"--{BOUNDARY}\r\nX-Big: {'a' * 20000}\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
            headers,
            400,
        ),
        "too many file parts": (
            multipart(*(part("file", b"x", f"{i}.txt") for i in range(4))),
            headers,
            413,
        ),
        "too many fields": (multipart(*(part(f"f{i}", b"x") for i in range(4))), headers, 413),
        "field too large": (multipart(part("note", b"x" * 200), good), headers, 413),
        "traversal-only filename": (multipart(part("file", b"x", "../")), headers, 400),
        "multipart/mixed": (
            multipart(good),
            {"Content-Type": f"multipart/mixed; boundary={BOUNDARY}"},
            415,
        ),
    }


@pytest.mark.parametrize("case", sorted(malformed_bodies()))
async def test_malformed_multipart_is_a_4xx_and_leaves_nothing(
    overrides: dict[str, Any], case: str
) -> None:
    body, headers, status = malformed_bodies()[case]
    limits = {"MAX_FILE_PARTS": 3, "MAX_FORM_FIELDS": 3, "MAX_FORM_FIELD_BYTES": 100}
    app = create_app({**overrides, **limits})
    async with app.test_app() as test_app:
        response = await test_app.test_client().post("/files", data=body, headers=headers)
        assert response.status_code == status, await response.get_data()
        assert response.content_type == "application/problem+json"
        await assert_nothing_stored(app, Path(overrides["STORAGE_DIR"]))


async def test_upload_routes_never_touch_request_files_or_form(
    client: QuartClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quart.wrappers.request import Request

    async def refuse(self: Request) -> None:
        raise AssertionError("request.files/form buffers and copies the upload")

    monkeypatch.setattr(Request, "files", property(refuse))
    monkeypatch.setattr(Request, "form", property(refuse))
    monkeypatch.setattr(Request, "get_data", refuse)
    body = multipart(part("file", b"data", "a.txt"), part("file", b"more", "b.txt"))
    assert (await client.post("/files", data=body, headers=multipart_headers())).status_code == 201
    assert (await client.put("/files/x", data=b"raw")).status_code == 201
    raw = await client.post(
        "/files", data=b"raw", headers={"Content-Disposition": 'attachment; filename="r"'}
    )
    assert raw.status_code == 201
