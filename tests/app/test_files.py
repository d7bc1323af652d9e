from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from quart import Quart, Response
from quart.testing import QuartClient
from sqlalchemy import text

from devtools.form_data import BOUNDARY, multipart, multipart_headers, part
from devtools.full_disk import FullDisk
from devtools.quart_client import as_http_connection, as_quart_client
from devtools.stored import assert_nothing_stored, blob_files, count_rows, temp_files
from quart_app import create_app
from quart_app.db.models import Batch, Blob, File
from quart_app.state import app_state


@pytest.fixture
def storage(overrides: dict[str, Any]) -> Path:
    return Path(overrides["STORAGE_DIR"])


async def upload(
    client: QuartClient, data: bytes, filename: str = "a.bin", content_type: str | None = None
) -> Response:
    body = multipart(part("file", data, filename, content_type))
    return await client.post("/files", data=body, headers=multipart_headers())


@pytest.mark.postgresql
async def test_one_file_part_is_201_with_location_and_representation(
    client: QuartClient,
) -> None:
    data = os.urandom(5000)
    response = await upload(client, data, "photo.png", content_type="image/png")
    assert response.status_code == 201
    body = await response.get_json()
    assert response.headers["Location"] == f"http://localhost/files/{body['id']}"
    assert body["links"] == {
        "self": response.headers["Location"],
        "content": response.headers["Location"] + "/content",
    }
    assert body["filename"] == "photo.png"
    assert body["content_type"] == "image/png"
    assert body["size"] == 5000
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["etag"] == f'"{body["sha256"]}"' == response.headers["ETag"]
    assert body["created_at"].endswith("Z") and body["updated_at"].endswith("Z")
    assert len(body["id"]) >= 22  # 128 random bits, base64url
    again = await client.get(response.headers["Location"])
    assert await again.get_json() == body
    assert again.headers["ETag"] == body["etag"]


@pytest.mark.postgresql
async def test_several_file_parts_make_a_batch(app: Quart, client: QuartClient) -> None:
    parts = [part("file", f"content {i}".encode(), f"{i}.txt") for i in range(3)]
    response = await client.post("/files", data=multipart(*parts), headers=multipart_headers())
    assert response.status_code == 201
    body = await response.get_json()
    assert response.headers["Location"] == f"http://localhost/batches/{body['id']}"
    assert [f["filename"] for f in body["files"]] == ["0.txt", "1.txt", "2.txt"]
    for file in body["files"]:
        assert (await client.get(file["links"]["self"])).status_code == 200
    assert await (await client.get(response.headers["Location"])).get_json() == body
    assert await count_rows(app, Batch) == 1


@pytest.mark.postgresql
async def test_a_batch_is_all_or_nothing(overrides: dict[str, Any], storage: Path) -> None:
    from quart_app import create_app

    app = create_app({**overrides, "MAX_UPLOAD_BYTES": 1000})
    async with app.test_app() as test_app:
        parts = [part("file", b"small", "ok.txt"), part("file", b"x" * 2000, "big.bin")]
        response = await test_app.test_client().post(
            "/files", data=multipart(*parts), headers=multipart_headers()
        )
        assert response.status_code == 413
        await assert_nothing_stored(app, storage)
        assert await count_rows(app, Batch) == 0


async def test_raw_body_named_by_content_disposition(client: QuartClient) -> None:
    response = await client.post(
        "/files",
        data=b"raw bytes",
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": "attachment; filename*=UTF-8''%E2%82%AC%20rates.txt; "
            'filename="fallback.txt"',
        },
    )
    assert response.status_code == 201
    body = await response.get_json()
    assert body["filename"] == "€ rates.txt"
    assert body["size"] == 9


async def test_raw_body_from_curl_data_binary_guesses_the_type(client: QuartClient) -> None:
    response = await client.post(
        "/files",
        data=b"{}",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Content-Disposition": 'attachment; filename="x.json"',
        },
    )
    assert response.status_code == 201
    assert (await response.get_json())["content_type"] == "application/json"


async def test_media_types_are_matched_whatever_their_case(client: QuartClient) -> None:
    """RFC 9110 §8.3.1: ``TEXT/HTML`` is HTML, stored as ``text/html`` and
    downloaded as an attachment; an upper-case multipart type is multipart."""
    html = await client.put(
        "/files/page", data=b"<script>1</script>", headers={"Content-Type": "TEXT/HTML"}
    )
    assert (await html.get_json())["content_type"] == "text/html"
    download = await client.get("/files/page/content")
    assert download.headers["Content-Type"].startswith("text/html")
    assert download.headers["Content-Disposition"].startswith("attachment;")
    form = await client.post(
        "/files",
        data=multipart(part("file", b"png", "p.png", "IMAGE/PNG")),
        headers={"Content-Type": f"Multipart/Form-Data; boundary={BOUNDARY}"},
    )
    assert form.status_code == 201
    body = await form.get_json()
    assert (body["filename"], body["content_type"], body["size"]) == ("p.png", "image/png", 3)
    curl_default = await client.post(
        "/files",
        data=b"{}",
        headers={
            "Content-Type": "Application/X-WWW-Form-Urlencoded",
            "Content-Disposition": 'attachment; filename="x.json"',
        },
    )
    assert (await curl_default.get_json())["content_type"] == "application/json"


async def test_raw_body_without_a_name_is_400(
    app: Quart, client: QuartClient, storage: Path
) -> None:
    response = await client.post("/files", data=b"x", headers={"Content-Type": "text/plain"})
    assert response.status_code == 400
    await assert_nothing_stored(app, storage)


@pytest.mark.postgresql
async def test_put_creates_then_replaces(app: Quart, client: QuartClient, storage: Path) -> None:
    created = await client.put("/files/report.txt", data=b"v1")
    assert created.status_code == 201
    assert created.headers["Location"] == "http://localhost/files/report.txt"
    first = await created.get_json()
    assert first["filename"] == "report.txt"
    replaced = await client.put("/files/report.txt", data=b"v2")
    assert replaced.status_code == 200
    second = await replaced.get_json()
    assert second["id"] == "report.txt"
    assert second["sha256"] == hashlib.sha256(b"v2").hexdigest()
    assert second["created_at"] == first["created_at"]
    # The replaced content had no other file: its bytes are gone.
    assert await count_rows(app, Blob) == 1
    assert len(blob_files(storage)) == 1
    content = await client.get("/files/report.txt/content")
    assert await content.get_data() == b"v2"


@pytest.mark.postgresql
async def test_put_preconditions(app: Quart, client: QuartClient, storage: Path) -> None:
    assert (
        await client.put("/files/doc", data=b"v1", headers={"If-None-Match": "*"})
    ).status_code == 201
    etag = (await (await client.get("/files/doc")).get_json())["etag"]
    refused = await client.put("/files/doc", data=b"v2", headers={"If-None-Match": "*"})
    assert refused.status_code == 412
    assert refused.content_type == "application/problem+json"
    stale = await client.put("/files/doc", data=b"v2", headers={"If-Match": '"0000"'})
    assert stale.status_code == 412
    ok = await client.put("/files/doc", data=b"v2", headers={"If-Match": etag})
    assert ok.status_code == 200
    absent = await client.put("/files/new", data=b"x", headers={"If-Match": "*"})
    assert absent.status_code == 412
    assert await count_rows(app, File) == 1
    assert temp_files(storage) == []


@pytest.mark.parametrize("bad_id", [".hidden", "a" * 129, "a b", "a%2Fb", "ünï"])
async def test_put_with_a_bad_id_is_400(client: QuartClient, bad_id: str) -> None:
    response = await client.put(f"/files/{bad_id}", data=b"x")
    assert response.status_code in (400, 404)
    assert response.content_type == "application/problem+json"


@pytest.mark.postgresql
async def test_identical_content_shares_one_blob_until_the_last_file_goes(
    app: Quart, client: QuartClient, storage: Path
) -> None:
    first = await (await upload(client, b"same bytes")).get_json()
    second = await (await upload(client, b"same bytes")).get_json()
    assert first["id"] != second["id"]
    assert await count_rows(app, Blob) == 1
    assert len(blob_files(storage)) == 1
    assert (await client.delete(f"/files/{first['id']}")).status_code == 204
    assert len(blob_files(storage)) == 1
    assert (await client.get(f"/files/{second['id']}/content")).status_code == 200
    assert (await client.delete(f"/files/{second['id']}")).status_code == 204
    await assert_nothing_stored(app, storage)


@pytest.mark.postgresql
async def test_delete_honours_if_match_and_404(client: QuartClient) -> None:
    body = await (await upload(client, b"x")).get_json()
    assert (
        await client.delete(f"/files/{body['id']}", headers={"If-Match": '"nope"'})
    ).status_code == 412
    # The raw exchange: the test client's Response would add a Content-Type.
    async with as_http_connection(
        client.request(f"/files/{body['id']}", method="DELETE", headers={"If-Match": body["etag"]})
    ) as connection:
        await connection.send_complete()
        assert await connection.receive() == b""
    assert connection.status_code == 204
    assert connection.headers is not None
    assert "Content-Type" not in connection.headers
    assert (await client.delete(f"/files/{body['id']}")).status_code == 404
    assert (await client.get(f"/files/{body['id']}")).status_code == 404


async def test_get_with_if_none_match_is_304(client: QuartClient) -> None:
    body = await (await upload(client, b"x")).get_json()
    response = await client.get(f"/files/{body['id']}", headers={"If-None-Match": body["etag"]})
    assert response.status_code == 304
    head = await client.head(f"/files/{body['id']}")
    assert head.status_code == 200 and head.headers["ETag"] == body["etag"]


@pytest.mark.postgresql
async def test_list_files_pages_with_link(client: QuartClient) -> None:
    ids = [(await (await upload(client, f"{i}".encode())).get_json())["id"] for i in range(5)]
    seen: list[str] = []
    url: str | None = "/files?limit=2"
    while url:
        response = await client.get(url)
        page = await response.get_json()
        seen += [f["id"] for f in page["items"]]
        assert ("Link" in response.headers) == (page["next"] is not None)
        url = page["next"]
    assert seen == ids
    assert (await client.get("/files?cursor=forged")).status_code == 400


async def test_batch_not_found(client: QuartClient) -> None:
    assert (await client.get("/batches/nope")).status_code == 404


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\report.pdf", "report.pdf"),
        ("nul\x00byte.txt", "nulbyte.txt"),
        ("evil\u202egnp.exe", "evilgnp.exe"),
        ("cafe\u0301.txt", "caf\u00e9.txt"),
        ("tab\tand\x7fdel.txt", "tabanddel.txt"),
        ("zero\u200bwidth\u200d\ufeff.txt", "zerowidth.txt"),
    ],
)
async def test_filenames_are_cleaned_metadata(
    client: QuartClient, storage: Path, given: str, stored: str
) -> None:
    response = await client.put(
        "/files/named",
        data=b"x",
        headers={"Content-Disposition": "attachment; filename*=UTF-8''" + _pct(given)},
    )
    assert response.status_code == 201, await response.get_data()
    assert (await response.get_json())["filename"] == stored
    assert not any(stored in str(p) for p in storage.rglob("*"))


def _pct(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


async def test_a_1000_character_filename_is_400(
    app: Quart, client: QuartClient, storage: Path
) -> None:
    response = await upload(client, b"x", "n" * 1000)
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    await assert_nothing_stored(app, storage)


@pytest.mark.local_storage_only
async def test_disk_full_is_507_and_leaves_nothing(
    app: Quart, client: QuartClient, storage: Path
) -> None:
    full = FullDisk(storage, room=10_000)
    app_state(app).store = full
    response = await upload(client, os.urandom(200_000))
    assert response.status_code == 507
    assert response.content_type == "application/problem+json"
    assert int(response.headers["Retry-After"]) > 0
    await assert_nothing_stored(app, storage)


@pytest.mark.own_database  # its trigger must not outlive it
@pytest.mark.postgresql
async def test_database_error_leaves_no_row_no_blob_no_temp(
    app: Quart, client: QuartClient, storage: Path
) -> None:
    async with app_state(app).database.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            await conn.execute(
                text(
                    "CREATE TRIGGER refuse_files BEFORE INSERT ON files "
                    "BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END"
                )
            )
        else:
            await conn.execute(
                text(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'refused by test trigger'; END $$"
                )
            )
            await conn.execute(
                text(
                    "CREATE TRIGGER refuse_files BEFORE INSERT ON files "
                    "FOR EACH ROW EXECUTE FUNCTION refuse()"
                )
            )
    response = await upload(client, os.urandom(10_000))
    assert response.status_code == 500
    assert "trigger" not in (await response.get_data(as_text=True))
    await assert_nothing_stored(app, storage)
    # Concurrent uploads share a group commit: it fails as a whole, and
    # still leaves nothing, whether the bytes were new or shared.
    same = os.urandom(10_000)
    responses = await asyncio.gather(
        *(upload(client, os.urandom(10_000), f"d{i}") for i in range(8)),
        *(upload(client, same, f"s{i}") for i in range(8)),
    )
    assert [r.status_code for r in responses] == [500] * 16
    await assert_nothing_stored(app, storage)


async def until_pending(app: Quart, count: int) -> None:
    """Until ``count`` uploads wait in the file batcher (it has no event)."""
    batcher = app_state(app).file_batcher
    for _ in range(500):
        if batcher.pending == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{batcher.pending} uploads pending, not {count}")


async def upload_then_hang_up(app: Quart, body: bytes, hang_up_at: int) -> None:
    """Send a whole upload, then disconnect once ``hang_up_at`` uploads wait
    in the batcher (Quart cancels the request)."""
    client = as_quart_client(app.test_client())
    async with as_http_connection(
        client.request("/files", method="POST", headers=multipart_headers())
    ) as conn:
        await conn.send(multipart(part("file", body, "gone.bin")))
        await conn.send_complete()
        await until_pending(app, hang_up_at)
        await conn.disconnect()


@pytest.mark.sqlite_only  # writes wait on this process's write lock
async def test_a_client_hanging_up_neither_fails_its_group_commit_nor_loses_its_file(
    app: Quart, client: QuartClient, storage: Path
) -> None:
    """Once an upload has joined a group commit the batch owns it: a client
    that hangs up while it waits (the request is cancelled) must not remove
    the temp file under the batch (which failed every upload in it with a
    500), and its file is stored like the others."""
    data = [os.urandom(4096) for _ in range(8)]
    async with app_state(app).database.write_lock:  # batches wait while held
        hung_up = [asyncio.ensure_future(upload_then_hang_up(app, d, 8)) for d in data[:2]]
        await until_pending(app, 2)  # the first batch holds one or both of these
        answered = [asyncio.ensure_future(upload(client, d)) for d in data[2:]]
        await until_pending(app, 8)
        await asyncio.sleep(0.05)  # the two disconnects cancel their requests
    responses = await asyncio.gather(*answered)
    await asyncio.gather(*hung_up)
    assert [r.status_code for r in responses] == [201] * 6
    await until_pending(app, 0)
    assert await count_rows(app, File) == 8
    assert len(blob_files(storage)) == 8
    assert temp_files(storage) == []


@pytest.mark.sqlite_only  # writes wait on this process's write lock
@pytest.mark.parametrize("request_kind", ["put", "batch"])
async def test_a_client_hanging_up_during_its_commit_leaves_it_to_finish(
    app: Quart, storage: Path, request_kind: str
) -> None:
    """PUT or several parts (or an Idempotency-Key, the same code): the
    commit runs as its own task and owns the temp files. Hanging up while it
    waits for the write lock used to remove them under it (so it failed);
    now it commits."""
    headers = {"Content-Type": "application/octet-stream"}
    if request_kind == "put":
        path, body = "/files/hung-up", os.urandom(4096)
    else:
        path, headers = "/files", multipart_headers()
        body = multipart(*(part("file", os.urandom(4096), f"f{i}") for i in range(3)))
    method = "PUT" if request_kind == "put" else "POST"
    client = as_quart_client(app.test_client())
    async with (
        app_state(app).database.write_lock,
        as_http_connection(client.request(path, method=method, headers=headers)) as conn,
    ):
        await conn.send(body)
        await conn.send_complete()
        for _ in range(500):  # until the commit task waits for the lock
            if app_state(app).database.commits.running:
                break
            await asyncio.sleep(0.01)
        assert app_state(app).database.commits.running == 1
        await conn.disconnect()
        await asyncio.sleep(0.05)
    await app_state(app).database.commits.wait()
    assert await count_rows(app, File) == (1 if request_kind == "put" else 3)
    assert len(blob_files(storage)) == await count_rows(app, File)
    assert temp_files(storage) == []


@pytest.mark.sqlite_only  # writes wait on this process's write lock
async def test_shutdown_lets_the_group_commit_in_flight_finish(
    overrides: dict[str, Any], storage: Path
) -> None:
    """Uploads whose clients hung up still wait in a batch when the server
    is told to stop: the batch commits before the database closes."""
    app = create_app(overrides)
    async with app.test_app(), app_state(app).database.write_lock:
        hung_up = [
            asyncio.ensure_future(upload_then_hang_up(app, os.urandom(4096), 4)) for _ in range(4)
        ]
        await asyncio.gather(*hung_up)
        # Leaving the block shuts the app down while the batch is queued.
    assert app_state(app).file_batcher.pending == 0
    restarted = create_app(overrides)
    async with restarted.test_app():
        assert await count_rows(restarted, File) == 4
    assert len(blob_files(storage)) == 4
    assert temp_files(storage) == []


@pytest.mark.sqlite_only  # writes wait on this process's write lock
async def test_shutdown_lets_a_commit_whose_client_hung_up_finish(
    overrides: dict[str, Any], storage: Path
) -> None:
    """The same for a PUT's commit task: the database closes only after it."""
    app = create_app(overrides)
    async with app.test_app():
        client = as_quart_client(app.test_client())
        headers = {"Content-Type": "application/octet-stream"}
        commits = app_state(app).database.commits
        async with (
            app_state(app).database.write_lock,
            as_http_connection(
                client.request("/files/late", method="PUT", headers=headers)
            ) as conn,
        ):
            await conn.send(os.urandom(4096))
            await conn.send_complete()
            for _ in range(500):
                if app_state(app).database.commits.running:
                    break
                await asyncio.sleep(0.01)
            await conn.disconnect()
    assert commits.running == 0
    restarted = create_app(overrides)
    async with restarted.test_app():
        assert await count_rows(restarted, File) == 1
    assert len(blob_files(storage)) == 1
    assert temp_files(storage) == []


@pytest.mark.postgresql
async def test_parallel_uploads_distinct_and_identical(
    app: Quart, client: QuartClient, storage: Path
) -> None:
    distinct = [os.urandom(50_000) for _ in range(16)]
    same = os.urandom(50_000)
    responses = await asyncio.gather(
        *(upload(client, d, f"d{i}") for i, d in enumerate(distinct)),
        *(upload(client, same, f"s{i}") for i in range(16)),
    )
    assert [r.status_code for r in responses] == [201] * 32
    bodies = [await r.get_json() for r in responses]
    for body, data in zip(bodies[:16], distinct, strict=True):
        assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert {b["sha256"] for b in bodies[16:]} == {hashlib.sha256(same).hexdigest()}
    assert await count_rows(app, File) == 32
    assert await count_rows(app, Blob) == 17
    assert len(blob_files(storage)) == 17
    assert temp_files(storage) == []
