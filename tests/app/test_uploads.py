"""tus 1.0.0 at /uploads, through the app (real SQLite, real directory)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from quart import Quart, Response
from quart.testing import QuartClient

from devtools.quart_client import as_http_connection, as_quart_client
from devtools.stored import count_rows, partial_files
from quart_app import create_app
from quart_app.db.models import File, Upload
from quart_app.state import app_state

# Also on PostgreSQL by default (tests/conftest.py).
pytestmark = pytest.mark.postgresql

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def create(client: QuartClient, length: int | None, **headers: str) -> str:
    sizing = {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
    response = await client.post(
        "/uploads",
        headers={**TUS, **sizing, "Upload-Metadata": f"filename {b64('a.bin')}", **headers},
    )
    assert response.status_code == 201, await response.get_data()
    location: str = response.headers["Location"]
    assert location.startswith("http://localhost/uploads/")
    return location.removeprefix("http://localhost")


async def patch(
    client: QuartClient, url: str, offset: int, data: bytes, **headers: str
) -> Response:
    return await client.patch(
        url, data=data, headers={**OCTETS, "Upload-Offset": str(offset), **headers}
    )


async def head(client: QuartClient, url: str) -> Any:
    # The raw exchange: the test client's head() recomputes Content-Length.
    # Any: callers read status_code and headers from it as from a Response,
    # and the connection types both as optional until the answer arrives.
    async with as_http_connection(client.request(url, method="HEAD", headers=TUS)) as connection:
        await connection.send_complete()
        await connection.receive()
    return connection


def partial_size(overrides: dict[str, Any], url: str) -> int:
    return (Path(overrides["STORAGE_DIR"]) / "partial" / url.rsplit("/", 1)[1]).stat().st_size


async def test_options_advertises_the_server(client: QuartClient) -> None:
    response = await client.options("/uploads")
    assert response.status_code == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert set(response.headers["Tus-Extension"].split(",")) == {
        "creation", "creation-with-upload", "creation-defer-length",
        "termination", "checksum", "expiration",
    }  # fmt: skip
    assert int(response.headers["Tus-Max-Size"]) == 5 * 1024**3
    assert set(response.headers["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "sha256", "md5"}


async def test_tus_resumable_is_required_and_answered(client: QuartClient) -> None:
    for headers in ({}, {"Tus-Resumable": "0.2.2"}):
        response = await client.post("/uploads", headers={"Upload-Length": "1", **headers})
        assert response.status_code == 412
        assert response.headers["Tus-Version"] == "1.0.0"
        assert response.content_type == "application/problem+json"
    url = await create(client, 10)
    unknown = await head(client, "/uploads/unknown")
    assert unknown.status_code == 404
    for response in (await head(client, url), await patch(client, url, 0, b"abc"), unknown):
        assert response.headers["Tus-Resumable"] == "1.0.0"


async def test_create_upload_and_complete_it(app: Quart, client: QuartClient) -> None:
    data = os.urandom(300_000)
    metadata = f"filename {b64('report.pdf')},filetype {b64('application/pdf')}"
    response = await client.post(
        "/uploads",
        headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": metadata},
    )
    assert response.status_code == 201
    body = await response.get_json()
    assert body["offset"] == 0 and body["length"] == len(data) and not body["completed"]
    assert "Upload-Expires" in response.headers
    url = response.headers["Location"].removeprefix("http://localhost")
    first = await patch(client, url, 0, data[:100_000])
    assert first.status_code == 204
    assert first.headers["Upload-Offset"] == "100000"
    last = await patch(client, url, 100_000, data[100_000:])
    assert last.status_code == 204
    assert last.headers["Upload-Offset"] == str(len(data))
    upload_id = url.rsplit("/", 1)[1]
    assert last.headers["Link"] == f'<http://localhost/files/{upload_id}>; rel="related"'
    file = await (await client.get(f"/files/{upload_id}")).get_json()
    assert file["sha256"] == hashlib.sha256(data).hexdigest()
    assert file["filename"] == "report.pdf" and file["content_type"] == "application/pdf"
    content = await client.get(f"/files/{upload_id}/content")
    assert await content.get_data() == data
    done = await head(client, url)
    assert done.headers["Upload-Offset"] == done.headers["Upload-Length"] == str(len(data))


async def test_a_patch_at_the_end_of_a_completed_upload(
    app: Quart, client: QuartClient, overrides: dict[str, Any]
) -> None:
    """A client that missed the completing PATCH's answer and sends it again
    empty gets the same 204; bytes past the end are a 413 and change nothing.
    Repeated, so that the second of each finds no hash state in memory."""
    url = await create(client, 5)
    upload_id = url.rsplit("/", 1)[1]
    assert (await patch(client, url, 0, b"hello")).status_code == 204
    link = f'<http://localhost/files/{upload_id}>; rel="related"'
    for _ in range(2):
        again = await patch(client, url, 5, b"")
        assert again.status_code == 204
        assert again.headers["Upload-Offset"] == "5" and again.headers["Link"] == link
        more = await patch(client, url, 5, b"more")
        assert more.status_code == 413
        assert more.content_type == "application/problem+json"
        assert (await more.get_json())["type"] == "urn:quart-app:problem:too-large"
        behind = await patch(client, url, 0, b"hello")
        assert behind.status_code == 409
    sha1_of_nothing = base64.b64encode(hashlib.sha1(b"").digest()).decode()
    checked = await patch(client, url, 5, b"", **{"Upload-Checksum": f"sha1 {sha1_of_nothing}"})
    assert checked.status_code == 204
    wrong = await patch(client, url, 5, b"", **{"Upload-Checksum": f"sha1 {b64('x' * 20)}"})
    assert wrong.status_code == 460
    assert (await head(client, url)).headers["Upload-Offset"] == "5"
    assert await (await client.get(f"/files/{upload_id}/content")).get_data() == b"hello"
    assert await count_rows(app, File) == 1
    assert partial_files(overrides["STORAGE_DIR"]) == []


async def test_head_reports_offset_length_metadata_no_store(client: QuartClient) -> None:
    metadata = f"filename {b64('x.txt')},flag"
    url = await create(client, 50, **{"Upload-Metadata": metadata})
    await patch(client, url, 0, b"12345")
    response = await head(client, url)
    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == "5"
    assert response.headers["Upload-Length"] == "50"
    assert response.headers["Upload-Metadata"] == metadata
    assert response.headers["Cache-Control"] == "no-store"


async def test_creation_with_upload(client: QuartClient) -> None:
    response = await client.post(
        "/uploads",
        data=b"first chunk",
        headers={**OCTETS, "Upload-Length": "100"},
    )
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "11"


async def test_zero_length_completes_at_once(client: QuartClient) -> None:
    url = await create(client, 0)
    upload_id = url.rsplit("/", 1)[1]
    file = await (await client.get(f"/files/{upload_id}")).get_json()
    assert file["size"] == 0 and file["sha256"] == hashlib.sha256(b"").hexdigest()
    response = await head(client, url)
    assert response.headers["Upload-Offset"] == "0" == response.headers["Upload-Length"]


async def test_deferred_length(client: QuartClient) -> None:
    url = await create(client, None)
    assert (await head(client, url)).headers["Upload-Defer-Length"] == "1"
    assert (await patch(client, url, 0, b"abc")).status_code == 204
    done = await patch(client, url, 3, b"def", **{"Upload-Length": "6"})
    assert done.status_code == 204 and "Link" in done.headers
    upload_id = url.rsplit("/", 1)[1]
    assert await (await client.get(f"/files/{upload_id}/content")).get_data() == b"abcdef"


async def test_creation_errors(overrides: dict[str, Any]) -> None:
    app = create_app({**overrides, "MAX_UPLOAD_BYTES": 1000})
    async with app.test_app() as test_app:
        client = as_quart_client(test_app.test_client())
        cases = [
            ({"Upload-Length": "1001"}, 413),
            ({}, 400),
            ({"Upload-Length": "5", "Upload-Defer-Length": "1"}, 400),
            ({"Upload-Defer-Length": "2"}, 400),
            ({"Upload-Length": "-1"}, 400),
            ({"Upload-Length": "5", "Upload-Metadata": "filename !!notbase64"}, 400),
            ({"Upload-Length": "5", "Upload-Metadata": f"a {b64('x')},a {b64('y')}"}, 400),
        ]
        for headers, status in cases:
            response = await client.post("/uploads", headers={**TUS, **headers})
            assert response.status_code == status, headers
            assert response.content_type == "application/problem+json"
        assert await count_rows(app, Upload) == 0


@pytest.mark.local_storage_only
async def test_patch_errors_change_nothing(client: QuartClient, overrides: dict[str, Any]) -> None:
    url = await create(client, 10)
    await patch(client, url, 0, b"12345")
    wrong_type = await client.patch(
        url, data=b"x", headers={**TUS, "Upload-Offset": "5", "Content-Type": "text/plain"}
    )
    assert wrong_type.status_code == 415
    assert (await patch(client, url, 3, b"xx")).status_code == 409
    assert (await patch(client, url, 5, b"too long!")).status_code == 413
    missing = await client.patch(url, data=b"x", headers=OCTETS)
    assert missing.status_code == 400
    assert (await head(client, url)).headers["Upload-Offset"] == "5"
    assert partial_size(overrides, url) == 5


@pytest.mark.local_storage_only
async def test_checksum_mismatch_is_460_and_keeps_the_offset(
    client: QuartClient, overrides: dict[str, Any]
) -> None:
    url = await create(client, 10)
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    response = await patch(client, url, 0, b"abcde", **{"Upload-Checksum": f"sha256 {wrong}"})
    assert response.status_code == 460
    assert response.content_type == "application/problem+json"
    assert (await head(client, url)).headers["Upload-Offset"] == "0"
    assert partial_size(overrides, url) == 0
    unsupported = await patch(client, url, 0, b"abcde", **{"Upload-Checksum": "crc32 AAAA"})
    assert unsupported.status_code == 400
    for name in ("sha1", "sha256", "md5"):
        good = base64.b64encode(hashlib.new(name, b"ab").digest()).decode()
        offset = int((await head(client, url)).headers["Upload-Offset"])
        ok = await patch(client, url, offset, b"ab", **{"Upload-Checksum": f"{name} {good}"})
        assert ok.status_code == 204, name


async def test_termination(app: Quart, client: QuartClient, overrides: dict[str, Any]) -> None:
    url = await create(client, 10)
    await patch(client, url, 0, b"abc")
    assert (await client.delete(url, headers=TUS)).status_code == 204
    assert (await head(client, url)).status_code == 404
    assert partial_files(overrides["STORAGE_DIR"]) == []
    assert await count_rows(app, Upload) == 0


async def test_expiry_answers_410_and_the_sweep_removes_the_bytes(
    overrides: dict[str, Any],
) -> None:
    from quart_app.db.models import utc_now
    from quart_app.services.resumable_uploads import sweep_expired

    app = create_app({**overrides, "UPLOAD_EXPIRES_SECONDS": 1, "UPLOAD_SWEEP_SECONDS": 3600})
    async with app.test_app() as test_app:
        client = as_quart_client(test_app.test_client())
        url = await create(client, 10)
        await patch(client, url, 0, b"abc")
        done = await create(client, 0)
        await asyncio.sleep(2.1)
        assert (await head(client, url)).status_code == 410
        assert (await patch(client, url, 3, b"d")).status_code == 410
        removed = await sweep_expired(app_state(app).database, app_state(app).store, utc_now())
        assert removed == 2
        assert (await head(client, url)).status_code == 404
        assert partial_files(overrides["STORAGE_DIR"]) == []
        # The completed upload's file outlives the upload.
        assert (await client.get(f"/files/{done.rsplit('/', 1)[1]}")).status_code == 200


async def test_two_patches_at_once_one_gets_423(client: QuartClient) -> None:
    url = await create(client, 20)
    async with as_http_connection(
        client.request(url, method="PATCH", headers={**OCTETS, "Upload-Offset": "0"})
    ) as first:
        await first.send(b"0123456789")
        await asyncio.sleep(0.2)  # the first PATCH now holds the upload
        second = await patch(client, url, 0, b"abcdefghij")
        assert second.status_code == 423
        assert second.content_type == "application/problem+json"
        await first.send_complete()
        await first.receive()
    assert first.status_code == 204
    assert (await head(client, url)).headers["Upload-Offset"] == "10"


@pytest.mark.local_storage_only
async def test_bytes_past_the_offset_from_a_crash_are_cut_off(
    client: QuartClient, overrides: dict[str, Any]
) -> None:
    url = await create(client, 6)
    await patch(client, url, 0, b"abc")
    partial = Path(overrides["STORAGE_DIR"]) / "partial" / url.rsplit("/", 1)[1]
    with partial.open("ab") as handle:
        handle.write(b"JUNK written but never acknowledged")
    assert (await patch(client, url, 3, b"def")).status_code == 204
    upload_id = url.rsplit("/", 1)[1]
    assert await (await client.get(f"/files/{upload_id}/content")).get_data() == b"abcdef"


async def test_a_new_process_rebuilds_the_hash_from_disk(overrides: dict[str, Any]) -> None:
    data = os.urandom(100_000)
    first = create_app(overrides)
    async with first.test_app() as test_app:
        url = await create(as_quart_client(test_app.test_client()), len(data))
        await patch(as_quart_client(test_app.test_client()), url, 0, data[:40_000])
    second = create_app(overrides)  # a restart: no hash state in memory
    async with second.test_app() as test_app:
        client = as_quart_client(test_app.test_client())
        assert (await head(client, url)).headers["Upload-Offset"] == "40000"
        assert (await patch(client, url, 40_000, data[40_000:])).status_code == 204
        file = await (await client.get(f"/files/{url.rsplit('/', 1)[1]}")).get_json()
    assert file["sha256"] == hashlib.sha256(data).hexdigest()


async def test_identical_content_shares_the_blob(app: Quart, client: QuartClient) -> None:
    await client.put("/files/existing", data=b"same")
    url = await create(client, 4)
    assert (await patch(client, url, 0, b"same")).status_code == 204
    from quart_app.db.models import Blob

    assert await count_rows(app, Blob) == 1
    assert await count_rows(app, File) == 2
    assert partial_files(app_state(app).settings.STORAGE_DIR) == []


async def test_method_override(client: QuartClient) -> None:
    url = await create(client, 5)
    response = await client.post(
        url,
        data=b"abcde",
        headers={**OCTETS, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
    )
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "5"
    gone = await client.post(url, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert gone.status_code == 204


async def test_cors_for_browser_clients(overrides: dict[str, Any]) -> None:
    app = create_app({**overrides, "CORS_ORIGINS": "https://app.example"})
    async with app.test_app() as test_app:
        client = as_quart_client(test_app.test_client())
        preflight = await client.options(
            "/uploads/anything",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "PATCH",
                     "Access-Control-Request-Headers": "upload-offset, tus-resumable"},
        )  # fmt: skip
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
        assert "Upload-Offset" in preflight.headers["Access-Control-Allow-Headers"]
        created = await client.post(
            "/uploads", headers={**TUS, "Upload-Length": "1", "Origin": "https://app.example"}
        )
        exposed = created.headers["Access-Control-Expose-Headers"]
        for name in ("Location", "Upload-Offset", "Tus-Resumable", "Upload-Expires"):
            assert name in exposed
        other = await client.post(
            "/uploads", headers={**TUS, "Upload-Length": "1", "Origin": "https://evil.example"}
        )
        assert "Access-Control-Allow-Origin" not in other.headers


async def test_the_background_sweep_runs_by_itself(overrides: dict[str, Any]) -> None:
    app = create_app({**overrides, "UPLOAD_EXPIRES_SECONDS": 0.5, "UPLOAD_SWEEP_SECONDS": 0.2})
    async with app.test_app() as test_app:
        client = as_quart_client(test_app.test_client())
        url = await create(client, 10)
        await patch(client, url, 0, b"abc")
        for _ in range(50):
            await asyncio.sleep(0.1)
            if await count_rows(app, Upload) == 0:
                break
        assert await count_rows(app, Upload) == 0
        assert (await head(client, url)).status_code == 404
        assert partial_files(overrides["STORAGE_DIR"]) == []
