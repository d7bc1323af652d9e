from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from quart.testing import QuartClient

from devtools.quart_client import as_http_connection

DATA = os.urandom(1000)


async def put(
    client: QuartClient, name: str, data: bytes = DATA, /, **headers: str
) -> dict[str, str]:
    response = await client.put(f"/files/{name}", data=data, headers=headers)
    assert response.status_code == 201
    body: dict[str, str] = await response.get_json()
    return body


async def test_whole_content_with_validators_and_safety_headers(client: QuartClient) -> None:
    body = await put(client, "a.bin")
    response = await client.get("/files/a.bin/content")
    assert response.status_code == 200
    assert await response.get_data() == DATA
    assert response.headers["ETag"] == body["etag"]
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Last-Modified"].endswith("GMT")
    assert response.headers["Content-Length"] == "1000"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response.headers["Content-Security-Policy"]


async def test_one_range_is_206(client: QuartClient) -> None:
    await put(client, "a.bin")
    for header, start, end in (
        ("bytes=0-99", 0, 100),
        ("bytes=990-", 990, 1000),
        ("bytes=-10", 990, 1000),
        ("bytes=900-5000", 900, 1000),
        ("bytes=900-" + "9" * 5000, 900, 1000),
        ("bytes=-" + "9" * 5000, 0, 1000),
    ):
        response = await client.get("/files/a.bin/content", headers={"Range": header})
        assert response.status_code == 206, header
        assert await response.get_data() == DATA[start:end]
        assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/1000"
        assert response.headers["Content-Length"] == str(end - start)


async def test_unsatisfiable_range_is_416_with_the_size(client: QuartClient) -> None:
    await put(client, "a.bin")
    for header in ("bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=" + "9" * 5000 + "-"):
        response = await client.get("/files/a.bin/content", headers={"Range": header})
        assert response.status_code == 416, header
        assert response.headers["Content-Range"] == "bytes */1000"
        assert response.content_type == "application/problem+json"


async def test_several_ranges_or_nonsense_get_the_whole_body(client: QuartClient) -> None:
    await put(client, "a.bin")
    for header in ("bytes=0-1,5-6", "items=0-1", "bytes=abc", "bytes=5-1", "bytes=٣-"):
        response = await client.get("/files/a.bin/content", headers={"Range": header})
        assert response.status_code == 200, header
        assert await response.get_data() == DATA


async def test_if_none_match_is_304_and_if_range_gates_the_range(client: QuartClient) -> None:
    body = await put(client, "a.bin")
    response = await client.get("/files/a.bin/content", headers={"If-None-Match": body["etag"]})
    assert response.status_code == 304
    assert await response.get_data() == b""
    assert response.headers["ETag"] == body["etag"]
    weak = await client.get("/files/a.bin/content", headers={"If-None-Match": "W/" + body["etag"]})
    assert weak.status_code == 304
    other = await client.get("/files/a.bin/content", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200
    matching = await client.get(
        "/files/a.bin/content", headers={"Range": "bytes=0-9", "If-Range": body["etag"]}
    )
    assert matching.status_code == 206
    stale = await client.get(
        "/files/a.bin/content", headers={"Range": "bytes=0-9", "If-Range": '"stale"'}
    )
    assert stale.status_code == 200
    assert await stale.get_data() == DATA


async def test_if_modified_since(client: QuartClient) -> None:
    await put(client, "a.bin")
    last_modified = (await client.get("/files/a.bin/content")).headers["Last-Modified"]
    response = await client.get(
        "/files/a.bin/content", headers={"If-Modified-Since": last_modified}
    )
    assert response.status_code == 304
    old = await client.get(
        "/files/a.bin/content", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}
    )
    assert old.status_code == 200


async def test_dates_that_are_not_dates_are_ignored(client: QuartClient) -> None:
    """RFC 9110 §13.1.3, §13.1.5: the answer is the one without the header."""
    await put(client, "a.bin")
    huge_year = "Mon, 01 Jan 10000000000000000000 00:00:00 GMT"
    modified = await client.get("/files/a.bin/content", headers={"If-Modified-Since": huge_year})
    assert modified.status_code == 200
    assert await modified.get_data() == DATA
    ranged = await client.get(
        "/files/a.bin/content", headers={"Range": "bytes=0-9", "If-Range": huge_year}
    )
    assert ranged.status_code == 200
    assert await ranged.get_data() == DATA


async def test_head_has_the_headers_and_no_body(client: QuartClient) -> None:
    await put(client, "a.bin")
    # Read the ASGI exchange itself: client.head() recomputes Content-Length.
    async with as_http_connection(
        client.request("/files/a.bin/content", method="HEAD")
    ) as connection:
        await connection.send_complete()
        data = await connection.receive()
    assert connection.status_code == 200
    assert connection.headers is not None
    assert connection.headers["Content-Length"] == "1000"
    assert data == b""


async def test_missing_file_content_is_404(client: QuartClient) -> None:
    assert (await client.get("/files/none/content")).status_code == 404


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("image/png", "inline"),
        ("text/plain", "inline"),
        ("application/pdf", "inline"),
        ("text/html", "attachment"),
        ("image/svg+xml", "attachment"),
        ("application/javascript", "attachment"),
        ("application/x-unknown", "attachment"),
    ],
)
async def test_inline_only_for_safe_types(
    client: QuartClient, content_type: str, kind: str
) -> None:
    await put(client, "f", b"<script>alert(1)</script>", **{"Content-Type": content_type})
    response = await client.get("/files/f/content")
    assert response.headers["Content-Disposition"].startswith(kind + ";")
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_content_disposition_has_ascii_fallback_and_utf8_name(client: QuartClient) -> None:
    exact = "na%C3%AFve%20%22r%C3%A9sum%C3%A9%22.pdf"  # naïve "résumé".pdf
    await put(client, "u", **{"Content-Disposition": f"attachment; filename*=UTF-8''{exact}"})
    header = (await client.get("/files/u/content")).headers["Content-Disposition"]
    # The type was guessed from .pdf, which may be shown inline.
    assert header == f"inline; filename=\"naive _resume_.pdf\"; filename*=UTF-8''{exact}"


def blob_path(overrides: dict[str, Any], sha256: str) -> Path:
    return Path(overrides["STORAGE_DIR"]) / "blobs" / sha256[:2] / sha256[2:4] / sha256


@pytest.mark.local_storage_only
async def test_missing_bytes_are_503_before_any_body(
    client: QuartClient, overrides: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Not a 200 that announces a length and then cuts the connection."""
    body = await put(client, "a.bin")
    blob_path(overrides, body["sha256"]).unlink()
    for method in ("GET", "HEAD"):
        async with as_http_connection(
            client.request("/files/a.bin/content", method=method)
        ) as connection:
            await connection.send_complete()
            # The old answer was a 200 whose body then never came.
            data = await asyncio.wait_for(connection.receive(), 5)
        assert connection.status_code == 503, method
        assert connection.headers is not None
        assert connection.headers["Content-Type"] == "application/problem+json"
        assert connection.headers["Retry-After"] == "5"
        if method == "GET":
            problem = json.loads(data)
            assert problem["type"] == "urn:quart-app:problem:blob-unavailable"
            assert problem["status"] == 503
            assert "a.bin" in problem["detail"] and body["sha256"] not in problem["detail"]
    missing = [r for r in caplog.records if r.name == "quart_app.storage"]
    assert missing and missing[0].levelno == logging.ERROR
    assert missing[0].__dict__["sha256"] == body["sha256"]


@pytest.mark.local_storage_only
async def test_bytes_of_the_wrong_size_are_503(
    client: QuartClient, overrides: dict[str, Any]
) -> None:
    body = await put(client, "a.bin")
    blob_path(overrides, body["sha256"]).write_bytes(DATA[:10])
    response = await client.get("/files/a.bin/content")
    assert response.status_code == 503
    assert response.content_type == "application/problem+json"


def open_files() -> set[str]:
    names = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            names.add(os.readlink(f"/proc/self/fd/{fd}"))
    return names


@pytest.mark.local_storage_only  # it looks for the blob's file among open files
async def test_no_blob_stays_open_whatever_the_answer(
    client: QuartClient, overrides: dict[str, Any]
) -> None:
    """The blob is opened before the answer is chosen: a HEAD, 304, 412, 416
    or a body read part-way must each close it again."""
    body = await put(client, "a.bin", os.urandom(3 * 1024 * 1024))
    path = str(blob_path(overrides, body["sha256"]))
    content = "/files/a.bin/content"
    for headers in (
        {},
        {"If-None-Match": body["etag"]},
        {"If-Match": '"other"'},
        {"Range": "bytes=9999999-"},
        {"Range": "bytes=0-9"},
    ):
        await client.get(content, headers=headers)
        assert path not in open_files(), headers
    async with as_http_connection(client.request(content, method="HEAD")) as connection:
        await connection.send_complete()
        await connection.receive()
    assert path not in open_files()
    async with as_http_connection(client.request(content)) as connection:
        await connection.send_complete()
        assert await connection.receive()  # the first chunk, then hang up
    await asyncio.sleep(0.05)
    assert path not in open_files()
