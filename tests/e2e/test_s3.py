"""The app on the S3 backend (QUART_APP_STORAGE_URL=s3://...), against a
real SeaweedFS with enforced credentials: in-process through Quart's test
client, and as real Hypercorn servers. Each test keeps to a key prefix of its
own, and checks what is left in the bucket under it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import httpx
import pytest
from quart import Quart
from quart.testing import QuartClient

from devtools.auth import bearer
from devtools.curl import curl
from devtools.ports import free_port
from devtools.quart_client import as_quart_client
from devtools.seaweed import Seaweed
from devtools.server import memory_kib, start_server, worker_pid
from devtools.stored import count_rows
from quart_app import create_app
from quart_app.config import load_settings
from quart_app.db.models import Blob, File
from quart_app.ops.integrity import check
from quart_app.ops.opening import open_store
from quart_app.ops.startup import StartupError
from quart_app.state import app_state
from quart_app.storage.factory import build_store
from quart_app.storage.s3.store import S3BlobStore, S3Credentials

MiB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
async def s3_app(overrides: dict[str, Any], s3_app_env: dict[str, str]) -> AsyncIterator[Quart]:
    application = create_app(
        {
            **overrides,
            "STORAGE_URL": s3_app_env["QUART_APP_STORAGE_URL"],
            "S3_PART_BYTES": 5 * MiB,
        }
    )
    async with application.test_app():
        yield application


@pytest.fixture
def s3_client(s3_app: Quart) -> QuartClient:
    return as_quart_client(s3_app.test_client())


def store_of(app: Quart) -> S3BlobStore:
    store = app_state(app).store
    assert isinstance(store, S3BlobStore)
    return store


async def bucket(app: Quart) -> list[str]:
    """Every object under the app's prefix, and every unfinished multipart
    upload (marked), relative to the prefix."""
    store = store_of(app)
    keys = [store.location.relative(key) async for key, _ in store.list_keys(store.location.prefix)]
    return sorted(keys + [f"{name} (multipart)" for name in await unfinished(store)])


async def unfinished(store: S3BlobStore) -> list[str]:
    client = await store.client()
    listed = await client.list_multipart_uploads(
        Bucket=store.location.bucket, Prefix=store.location.prefix
    )
    return [store.location.relative(u["Key"]) for u in listed.get("Uploads", [])]


async def settled_bucket(app: Quart) -> list[str]:
    """The bucket once background cleanups (aborts, temp deletes) have run."""
    store = store_of(app)
    for task in list(store._tasks):
        await task
    return await bucket(app)


def blob(sha256: str) -> str:
    return f"blobs/{sha256}"


async def test_upload_download_range_etag_304_on_s3(s3_app: Quart, s3_client: QuartClient) -> None:
    data = os.urandom(12 * MiB + 3)  # three parts of 5 MiB, the last one short
    sha = hashlib.sha256(data).hexdigest()
    created = await s3_client.put("/files/big.bin", data=data)
    assert created.status_code == 201
    body = await created.get_json()
    assert body["sha256"] == sha and body["size"] == len(data)
    assert await bucket(s3_app) == [blob(sha)]

    whole = await s3_client.get("/files/big.bin/content")
    assert whole.status_code == 200
    assert await whole.get_data() == data
    assert whole.headers["ETag"] == f'"{sha}"'
    ranged = await s3_client.get(
        "/files/big.bin/content", headers={"Range": "bytes=5242878-5242890"}
    )
    assert ranged.status_code == 206
    assert await ranged.get_data() == data[5242878:5242891]
    assert ranged.headers["Content-Range"] == f"bytes 5242878-5242890/{len(data)}"
    unchanged = await s3_client.get("/files/big.bin/content", headers={"If-None-Match": f'"{sha}"'})
    assert unchanged.status_code == 304
    beyond = await s3_client.get("/files/big.bin/content", headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416
    # (HEAD: the test client recomputes Content-Length; tests/e2e cover it.)
    assert (await s3_client.head("/files/big.bin/content")).status_code == 200


async def test_identical_content_is_stored_once_and_deletes_keep_shared_bytes(
    s3_app: Quart, s3_client: QuartClient
) -> None:
    data = os.urandom(6 * MiB)
    sha = hashlib.sha256(data).hexdigest()
    for name in ("one", "two"):
        assert (await s3_client.put(f"/files/{name}", data=data)).status_code == 201
    multipart = await s3_client.post(
        "/files",
        data=b'--b\r\nContent-Disposition: form-data; name="file"; filename="three"\r\n\r\n'
        + data
        + b"\r\n--b--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert multipart.status_code == 201
    assert await bucket(s3_app) == [blob(sha)]
    assert await count_rows(s3_app, Blob) == 1

    assert (await s3_client.delete("/files/one")).status_code == 204
    assert await bucket(s3_app) == [blob(sha)]  # still used by two, three
    assert (await s3_client.delete("/files/two")).status_code == 204
    third = (await multipart.get_json())["id"]
    assert (await s3_client.delete(f"/files/{third}")).status_code == 204
    assert await bucket(s3_app) == []
    assert await count_rows(s3_app, Blob) == 0


async def test_replace_retires_the_old_bytes(s3_app: Quart, s3_client: QuartClient) -> None:
    assert (await s3_client.put("/files/f", data=b"old bytes")).status_code == 201
    replaced = await s3_client.put("/files/f", data=b"new bytes")
    assert replaced.status_code == 200
    assert await bucket(s3_app) == [blob(hashlib.sha256(b"new bytes").hexdigest())]
    assert await (await s3_client.get("/files/f/content")).get_data() == b"new bytes"


async def test_a_failed_upload_leaves_no_object(
    overrides: dict[str, Any], s3_app_env: dict[str, str]
) -> None:
    """Too large after several parts went up: the multipart upload is
    aborted, no temp object, no row."""
    app = create_app(
        {
            **overrides,
            "STORAGE_URL": s3_app_env["QUART_APP_STORAGE_URL"],
            "S3_PART_BYTES": 5 * MiB,
            "MAX_UPLOAD_BYTES": 12 * MiB,
        }
    )
    async with app.test_app() as test_app:
        client = test_app.test_client()
        too_large = await client.put("/files/x", data=os.urandom(13 * MiB))
        assert too_large.status_code == 413
        assert await count_rows(app, File) == 0
        assert await settled_bucket(app) == []


async def test_tus_on_s3_across_part_boundaries(s3_app: Quart, s3_client: QuartClient) -> None:
    data = os.urandom(11 * MiB + 5)
    sha = hashlib.sha256(data).hexdigest()
    created = await s3_client.post("/uploads", headers={**TUS, "Upload-Length": str(len(data))})
    assert created.status_code == 201
    url = created.headers["Location"].removeprefix("http://localhost")
    upload_id = url.rsplit("/", 1)[1]
    offset = 0
    for end in (1000, 6 * MiB, 10 * MiB + 1, len(data)):
        patched = await s3_client.patch(
            url,
            data=data[offset:end],
            headers={
                **TUS,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert patched.status_code == 204, await patched.get_data()
        offset = int(patched.headers["Upload-Offset"])
        assert offset == end
        if end != len(data):
            # The whole parts so far, and the bytes past them as this offset's
            # tail (the previous offset's tail goes at the next PATCH).
            names = [k for k in await settled_bucket(s3_app) if k.startswith("partial/")]
            parts = [k for k in names if "/part-" in k]
            assert len(parts) == end // (5 * MiB), names
            assert any(k.endswith(f"/tail-{end:020d}") for k in names) == bool(end % (5 * MiB))
    # Another server would rebuild the hash by reading back; here the file
    # appeared with the upload's id and the right bytes.
    content = await s3_client.get(f"/files/{upload_id}/content")
    assert content.status_code == 200
    assert await content.get_data() == data
    assert content.headers["ETag"] == f'"{sha}"'
    assert await settled_bucket(s3_app) == [blob(sha)]


async def test_tus_termination_removes_the_partial(s3_app: Quart, s3_client: QuartClient) -> None:
    created = await s3_client.post("/uploads", headers={**TUS, "Upload-Length": str(7 * MiB)})
    url = created.headers["Location"].removeprefix("http://localhost")
    patched = await s3_client.patch(
        url,
        data=os.urandom(6 * MiB),
        headers={
            **TUS,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert patched.status_code == 204
    assert (await s3_client.delete(url, headers=TUS)).status_code == 204
    assert await settled_bucket(s3_app) == []


async def test_check_finds_and_repairs_orphans_on_s3(s3_app: Quart, s3_client: QuartClient) -> None:
    assert (await s3_client.put("/files/kept", data=b"kept")).status_code == 201
    store = store_of(s3_app)
    client = await store.client()
    orphan = hashlib.sha256(b"orphan").hexdigest()
    await client.put_object(Bucket=store.location.bucket, Key=store.blob_key(orphan), Body=b"x")
    stale = store.location.key("tmp", "00000000000000000001-dead")
    await client.put_object(Bucket=store.location.bucket, Key=stale, Body=b"half")
    database = app_state(s3_app).database
    report = await check(database, store, temp_max_age=-1.0, repair=False)
    assert report.checked_files == 1 and not report.damaged
    assert report.orphan_blobs == [orphan]
    assert report.stale_temp_files == ["tmp/00000000000000000001-dead"]
    repaired = await check(database, store, temp_max_age=-1.0, repair=True)
    assert repaired.clean
    assert await bucket(s3_app) == [blob(hashlib.sha256(b"kept").hexdigest())]


async def test_readyz_is_503_when_the_store_refuses(s3_app: Quart, s3_client: QuartClient) -> None:
    assert (await s3_client.get("/readyz")).status_code == 200
    store = store_of(s3_app)
    c = store.credentials
    refused = S3Credentials(c.endpoint, c.region, c.access_key, "revoked-secret-key-0000")
    app_state(s3_app).store = S3BlobStore(store.location, refused, store.part_bytes)
    try:
        answer = await s3_client.get("/readyz")
        assert answer.status_code == 503
        assert answer.headers["Content-Type"] == "application/problem+json"
    finally:
        await app_state(s3_app).store.close()
        app_state(s3_app).store = store


async def test_wrong_credentials_are_refused(s3_env: dict[str, str]) -> None:
    env = {**s3_env, "AWS_SECRET_ACCESS_KEY": "not-the-secret-at-all"}
    store = build_store(load_settings(environ=env), environ=env)
    from quart_app.storage import StorageUnwritable

    try:
        with pytest.raises(StorageUnwritable, match=r"SignatureDoesNotMatch|AccessDenied|403"):
            await store.probe()
    finally:
        await store.close()


def test_a_server_with_wrong_credentials_does_not_start(
    tmp_path: Path, s3_env: dict[str, str]
) -> None:
    env = {**s3_env, "AWS_SECRET_ACCESS_KEY": "not-the-secret-at-all"}
    with pytest.raises(RuntimeError, match="exited early") as failed:
        start_server(tmp_path / "server", extra_env=env)
    lines = [
        line for line in str(failed.value).splitlines() if line.startswith("quart_app: cannot")
    ]
    assert lines, str(failed.value)
    assert lines[0].startswith(
        f"quart_app: cannot start: object store {s3_env['QUART_APP_STORAGE_URL']}: S3 answered"
    ), lines[0]
    assert "not-the-secret" not in str(failed.value)


def test_server_memory_stays_bounded_uploading_to_s3(
    tmp_path: Path, seaweed: Seaweed, s3_env: dict[str, str]
) -> None:
    """A real Hypercorn worker streams 256 MiB to S3 (16 MiB parts, the
    default) by PUT and by tus: its peak RSS grows by about two parts, not by
    the file; then the file downloads whole."""
    server = start_server(tmp_path / "server", extra_env=s3_env)
    try:
        pid = worker_pid(server)
        small = tmp_path / "small"
        small.write_bytes(os.urandom(MiB))
        assert curl("-T", str(small), f"{server.url}/files/warm")[0] == 201
        before = memory_kib(pid, "VmHWM")
        big = tmp_path / "big"
        with big.open("wb") as handle:
            handle.truncate(256 * MiB)
        status, _, body = curl("-T", str(big), f"{server.url}/files/big")
        assert status == 201, body
        created = httpx.post(
            f"{server.url}/uploads",
            headers={**TUS, **bearer(), "Upload-Length": str(256 * MiB)},
        )
        with big.open("rb") as stream:
            patched = httpx.patch(
                created.headers["Location"],
                content=stream,
                headers={
                    **TUS,
                    **bearer(),
                    "Upload-Offset": "0",
                    "Content-Type": "application/offset+octet-stream",
                },
                timeout=300,
            )
        assert patched.status_code == 204, patched.text
        growth_mib = (memory_kib(pid, "VmHWM") - before) / 1024
        # Measured 36 MiB: the part gathering and the part in flight; a body
        # held whole would be 256 MiB and more.
        assert growth_mib < 48, f"peak RSS grew {growth_mib:.1f} MiB for a 256 MiB upload"
        downloaded = hashlib.sha256()
        content_url = f"{server.url}/files/big/content"
        with httpx.stream("GET", content_url, headers=bearer(), timeout=120) as answer:
            for chunk in answer.iter_bytes():
                downloaded.update(chunk)
        assert downloaded.hexdigest() == hashlib.sha256(bytes(256 * MiB)).hexdigest()
    finally:
        server.stop()


async def test_an_unreachable_store_stops_startup_with_one_line(
    s3_env: dict[str, str],
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**s3_env, "AWS_ENDPOINT_URL": nobody}
    url = s3_env["QUART_APP_STORAGE_URL"]
    settings = load_settings(environ=env)
    with patch.dict(os.environ, env), pytest.raises(StartupError) as stopped:
        await open_store(settings)
    assert stopped.value.cause.startswith(f"object store {url}: S3 is not reachable"), (
        stopped.value.cause
    )
    assert "\n" not in stopped.value.cause
