"""`python -m quart_app check [--repair]` and crash recovery on PostgreSQL
and the S3 store together (a real PostgreSQL, a real SeaweedFS): orphan
objects, objects missing under their rows, stale multipart uploads, orphan
partial uploads, trash and publishing markers a crash left."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from quart import Quart
from quart.testing import QuartClient

from devtools import PROJECT_ROOT
from devtools.app_settings import temp_app_settings
from devtools.auth import bearer
from devtools.quart_client import as_quart_client
from devtools.server import start_server
from quart_app import create_app
from quart_app.config import load_settings
from quart_app.ops.integrity import check
from quart_app.state import app_state
from quart_app.storage.factory import build_s3_store
from quart_app.storage.s3.store import S3BlobStore

MiB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
async def app(
    own_postgres_url: str, s3_app_env: dict[str, str], tmp_path: Path
) -> AsyncIterator[Quart]:
    application = create_app(
        {
            **temp_app_settings(tmp_path),
            "DATABASE_URL": own_postgres_url,
            "STORAGE_URL": s3_app_env["QUART_APP_STORAGE_URL"],
            "S3_PART_BYTES": 5 * MiB,
        }
    )
    async with application.test_app():
        yield application


def store_of(app: Quart) -> S3BlobStore:
    store = app_state(app).store
    assert isinstance(store, S3BlobStore)
    return store


async def bucket(store: S3BlobStore) -> list[str]:
    """Every object under the prefix, and every unfinished multipart upload."""
    keys = [store.location.relative(key) async for key, _ in store.list_keys(store.location.prefix)]
    client = await store.client()
    listed = await client.list_multipart_uploads(
        Bucket=store.location.bucket, Prefix=store.location.prefix
    )
    return sorted(
        keys
        + [f"{store.location.relative(u['Key'])} (multipart)" for u in listed.get("Uploads", [])]
    )


async def started_upload(client: QuartClient) -> str:
    """An upload of 10 bytes with its first 3 committed: its id."""
    made = await client.post("/uploads", headers={**TUS, "Upload-Length": "10"})
    upload_id: str = made.headers["Location"].rsplit("/", 1)[1]
    patched = await client.patch(
        f"/uploads/{upload_id}",
        data=b"abc",
        headers={**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"},
    )
    assert patched.status_code == 204
    return upload_id


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_check_and_repair_on_postgresql_and_s3(app: Quart) -> None:
    """Every kind of leftover at once; ``temp_max_age`` -1 makes every temp
    and partial old enough (the command's own age is BODY_DEADLINE + 60 s)."""
    client = as_quart_client(app.test_client())
    assert (await client.put("/files/kept", data=b"kept")).status_code == 201
    assert (await client.put("/files/lost", data=b"lost bytes")).status_code == 201
    live_id, broken_id = (await started_upload(client), await started_upload(client))
    store = store_of(app)
    s3 = await store.client()
    bucket_name, loc = store.location.bucket, store.location
    # An orphan object at a content address, no row.
    await s3.put_object(Bucket=bucket_name, Key=store.blob_key(sha(b"orphan")), Body=b"orphan")
    # The object under a row gone, and the tail under a live upload's offset.
    await s3.delete_object(Bucket=bucket_name, Key=store.blob_key(sha(b"lost bytes")))
    await s3.delete_object(Bucket=bucket_name, Key=loc.key("partial", broken_id, f"tail-{3:020d}"))
    # Multipart uploads a killed server never completed nor aborted: a
    # writer's (tmp/) and a composition's (at the address itself).
    stale_tmp = loc.key("tmp", "00000000000000000001-dead")
    await s3.create_multipart_upload(Bucket=bucket_name, Key=stale_tmp)
    composing = store.blob_key(sha(b"composed"))
    await s3.create_multipart_upload(Bucket=bucket_name, Key=composing)
    # The partial of an upload that has no row (its server died between
    # creating the partial and committing the row).
    await s3.put_object(Bucket=bucket_name, Key=loc.key("partial", "nobody", "info"), Body=b"{}")
    database = app_state(app).database

    report = await check(database, store, temp_max_age=-1.0, repair=False)
    assert report.checked_files == 2
    assert report.missing_bytes == ["lost"] and not report.corrupt_bytes
    assert report.orphan_blobs == [sha(b"orphan")]
    assert report.stale_temp_files == [
        f"blobs/{sha(b'composed')} (multipart upload)",
        "tmp/00000000000000000001-dead (multipart upload)",
    ]
    assert report.orphan_partials == ["nobody"]
    assert report.missing_partials == [broken_id]

    repaired = await check(database, store, temp_max_age=-1.0, repair=True)
    # Bytes missing under a row are for a person to decide: still reported.
    assert repaired.missing_bytes == ["lost"] and not repaired.clean
    assert repaired.missing_partials == [broken_id]
    assert await bucket(store) == sorted(
        [
            f"blobs/{sha(b'kept')}",
            f"partial/{broken_id}/info",
            f"partial/{live_id}/info",
            f"partial/{live_id}/tail-{3:020d}",
        ]
    )
    # Once the file and the upload whose bytes are gone are deleted, all is
    # well; the live upload's partial was never touched and completes.
    assert (await client.delete("/files/lost")).status_code == 204
    assert (await client.delete(f"/uploads/{broken_id}", headers=TUS)).status_code == 204
    done = await client.patch(
        f"/uploads/{live_id}",
        data=b"defghij",
        headers={**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "3"},
    )
    assert done.status_code == 204
    assert (await check(database, store, temp_max_age=-1.0, repair=False)).clean
    content = await client.get(f"/files/{live_id}/content")
    assert await content.get_data() == b"abcdefghij"


def run_check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quart_app", "check", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def app_env(own_postgres_url: str, s3_env: dict[str, str], root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUART_APP_", "AWS_"))}
    env.update(
        {
            **s3_env,
            "QUART_APP_DATABASE_URL": own_postgres_url,
            "QUART_APP_INSTANCE_DIR": str(root / "instance"),
            "QUART_APP_STORAGE_DIR": str(root / "uploads"),
            "PYTHONPATH": str(PROJECT_ROOT),
        }
    )
    return env


async def test_the_check_command_and_recovery_after_kill_9(
    own_postgres_url: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """A real server on PostgreSQL + S3, killed with SIGKILL while a delete
    had moved a blob to trash (as a transaction that never committed
    leaves it); restarted, it puts the blob back. The command reports an
    orphan object and a missing one, repairs the orphan, exit 0 at the end."""
    shared = {**s3_env, "QUART_APP_DATABASE_URL": own_postgres_url}
    server = start_server(tmp_path / "server", shared)
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=bearer(), timeout=30) as http:
            for name in ("keep", "gone"):
                stored = await http.put(f"/files/{name}", content=f"{name} bytes".encode())
                assert stored.status_code == 201
        env = app_env(own_postgres_url, s3_env, tmp_path / "operator")
        clean = run_check(env)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert "checked 2 file(s)" in clean.stdout and "all is well" in clean.stdout

        server.stop(sig=9)
        async with s3_store(env) as s3store:
            s3 = await s3store.client()
            bucket_name = s3store.location.bucket
            keep = s3store.blob_key(sha(b"keep bytes"))
            trash = s3store.location.key("trash", f"{sha(b'keep bytes')}.{secrets.token_hex(8)}")
            await s3.copy_object(
                Bucket=bucket_name, Key=trash, CopySource={"Bucket": bucket_name, "Key": keep}
            )
            await s3.delete_object(Bucket=bucket_name, Key=keep)
            orphan = sha(b"orphan")
            await s3.put_object(Bucket=bucket_name, Key=s3store.blob_key(orphan), Body=b"orphan")
            await s3.delete_object(Bucket=bucket_name, Key=s3store.blob_key(sha(b"gone bytes")))

        server.start()  # crash recovery: the trash goes back to its address
        async with httpx.AsyncClient(base_url=server.url, headers=bearer(), timeout=30) as http:
            assert (await http.get("/files/keep/content")).content == b"keep bytes"

        found = run_check(env)
        assert found.returncode == 1
        assert f"orphan blob (no row): {orphan}" in found.stdout
        assert "file whose bytes are missing: gone" in found.stdout
        assert "trash file" not in found.stdout
        repaired = run_check(env, "--repair")
        assert repaired.returncode == 1  # the missing bytes remain a person's call
        assert f"repaired: removed orphan blob {orphan}" in repaired.stdout
        async with httpx.AsyncClient(base_url=server.url, headers=bearer(), timeout=30) as http:
            assert (await http.delete("/files/gone")).status_code == 204
        final = run_check(env)
        assert final.returncode == 0, final.stdout
    finally:
        server.stop()


@asynccontextmanager
async def s3_store(env: dict[str, str]) -> AsyncIterator[S3BlobStore]:
    """The store the server uses, opened from the test (to leave what a
    crash leaves)."""
    store = build_s3_store(load_settings(environ=env), env)
    assert isinstance(store, S3BlobStore)
    try:
        yield store
    finally:
        await store.close()
