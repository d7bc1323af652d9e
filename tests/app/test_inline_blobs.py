"""Small blobs kept in their database row (INLINE_BLOB_BYTES): the same
content addressing, de-duplication and downloads as blobs in files, and
nothing on disk for them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import Quart
from quart.testing import QuartClient
from sqlalchemy import select

from devtools.quart_client import as_quart_client
from devtools.stored import blob_files, count_rows, temp_files
from quart_app import create_app
from quart_app.db.models import Blob, File
from quart_app.ops.integrity import check
from quart_app.state import app_state

SMALL = os.urandom(4096)
LIMIT = 64 * 1024


@pytest.fixture
async def app(overrides: dict[str, Any]) -> AsyncIterator[Quart]:
    application = create_app({**overrides, "INLINE_BLOB_BYTES": LIMIT})
    async with application.test_app():
        yield application


@pytest.fixture
def client(app: Quart) -> QuartClient:
    return as_quart_client(app.test_client())


async def content_in_row(app: Quart, sha256: str) -> bytes | None:
    async with app_state(app).database.sessionmaker() as session:
        return await session.scalar(select(Blob.content).where(Blob.sha256 == sha256))


def form(data: bytes, name: str = "a.bin") -> dict[str, Any]:
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return {
        "data": body,
        "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    }


async def test_a_small_upload_lives_in_its_row_and_downloads(
    app: Quart, client: QuartClient, overrides: dict[str, Any]
) -> None:
    response = await client.post("/files", **form(SMALL))
    assert response.status_code == 201
    body = await response.get_json()
    assert body["sha256"] == hashlib.sha256(SMALL).hexdigest()
    assert await content_in_row(app, body["sha256"]) == SMALL
    storage = overrides["STORAGE_DIR"]
    assert blob_files(storage) == []
    assert temp_files(storage) == []
    download = await client.get(f"/files/{body['id']}/content")
    assert download.status_code == 200
    assert await download.get_data() == SMALL
    assert download.headers["ETag"] == body["etag"]
    ranged = await client.get(f"/files/{body['id']}/content", headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206
    assert await ranged.get_data() == SMALL[10:20]


async def test_a_file_at_the_limit_is_in_its_row_and_one_byte_more_on_disk(
    app: Quart, client: QuartClient, overrides: dict[str, Any]
) -> None:
    at_limit, over = os.urandom(LIMIT), os.urandom(LIMIT + 1)
    first = await (await client.put("/files/at", data=at_limit)).get_json()
    second = await (await client.put("/files/over", data=over)).get_json()
    assert await content_in_row(app, first["sha256"]) == at_limit
    assert await content_in_row(app, second["sha256"]) is None
    assert [p.name for p in blob_files(overrides["STORAGE_DIR"])] == [second["sha256"]]
    for name, data in (("at", at_limit), ("over", over)):
        assert await (await client.get(f"/files/{name}/content")).get_data() == data


async def test_identical_bytes_are_one_blob(app: Quart, client: QuartClient) -> None:
    ids = []
    for _ in range(3):
        response = await client.post("/files", **form(SMALL))
        ids.append((await response.get_json())["id"])
    await client.put("/files/same", data=SMALL)
    assert await count_rows(app, File) == 4
    assert await count_rows(app, Blob) == 1


async def test_deleting_the_last_file_removes_the_bytes(
    app: Quart, client: QuartClient, overrides: dict[str, Any]
) -> None:
    await client.put("/files/a", data=SMALL)
    await client.put("/files/b", data=SMALL)
    assert (await client.delete("/files/a")).status_code == 204
    assert await count_rows(app, Blob) == 1
    assert (await client.delete("/files/b")).status_code == 204
    assert await count_rows(app, Blob) == 0
    assert blob_files(overrides["STORAGE_DIR"]) == []


async def test_replacing_small_with_small_and_large(app: Quart, client: QuartClient) -> None:
    large = os.urandom(LIMIT * 2)
    await client.put("/files/a", data=SMALL)
    replaced = await client.put("/files/a", data=large)
    assert replaced.status_code == 200
    assert await (await client.get("/files/a/content")).get_data() == large
    await client.put("/files/a", data=SMALL[:100])
    assert await (await client.get("/files/a/content")).get_data() == SMALL[:100]
    assert await count_rows(app, Blob) == 1


async def test_the_integrity_check_verifies_bytes_in_rows(app: Quart, client: QuartClient) -> None:
    body = await (await client.put("/files/a", data=SMALL)).get_json()
    state = app_state(app)
    report = await check(state.database, state.store, 3600, repair=False)
    assert report.checked_files == 1
    assert report.missing_bytes == [] and report.corrupt_bytes == []
    async with state.database.sessionmaker() as session, session.begin():
        blob = await session.get(Blob, body["sha256"])
        assert blob is not None
        blob.content = b"not the bytes"
    report = await check(state.database, state.store, 3600, repair=False)
    assert report.corrupt_bytes == ["a"]


async def test_a_tus_upload_of_bytes_already_in_a_row_shares_them(
    app: Quart, client: QuartClient
) -> None:
    await client.put("/files/a", data=SMALL)
    created = await client.post(
        "/uploads",
        headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(len(SMALL))},
    )
    assert created.status_code == 201
    location = created.headers["Location"]
    patched = await client.patch(
        location,
        data=SMALL,
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert patched.status_code == 204
    assert await count_rows(app, Blob) == 1
    upload_id = location.rsplit("/", 1)[1]
    assert await (await client.get(f"/files/{upload_id}/content")).get_data() == SMALL
