"""What an app or a running server left behind: rows, blobs, temp files.

A test names its store by its storage directory. Under
``QUART_APP_TEST_STORAGE=s3`` the ``overrides`` fixture registers that
directory's S3 prefix (:func:`use_s3_for`), and the same functions list the
prefix's objects instead (blobs/, tmp/, trash/, partial/, publishing/, and
multipart uploads not completed or aborted), so one assertion holds for
both stores."""

from __future__ import annotations

import functools
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from botocore.config import Config
from botocore.session import get_session
from quart import Quart
from sqlalchemy import func, select

from quart_app.db.models import Base, Blob, File, QuotaReservation, User
from quart_app.services.accounts import OPERATOR_EMAIL
from quart_app.state import app_state

from .server import RunningServer


async def count_rows(app: Quart, model: type[Base]) -> int:
    """Rows of ``model``; for users, not counting the operator account (made
    at startup when an admin key is configured, as every test app has)."""
    query = select(func.count()).select_from(model)
    if model is User:
        query = query.where(User.email != OPERATOR_EMAIL)
    async with app_state(app).database.sessionmaker() as session:
        return int(await session.scalar(query) or 0)


async def database_rows(app: Quart) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, in a stable order: compare two of these to
    show that a request stored or changed nothing in the database."""
    tables = {}
    async with app_state(app).database.sessionmaker() as session:
        for table in Base.metadata.sorted_tables:
            result = await session.execute(select(table).order_by(*table.primary_key.columns))
            tables[table.name] = [tuple(row) for row in result]
    return tables


@dataclass(frozen=True)
class S3Prefix:
    """A test's prefix in the run's object store, read synchronously."""

    endpoint: str
    region: str
    access_key: str
    secret_key: str
    bucket: str
    prefix: str

    def _client(self) -> Any:
        return _client(self.endpoint, self.region, self.access_key, self.secret_key)

    def objects(self, folder: str = "") -> dict[str, int]:
        """Keys (relative to the prefix) under ``folder``, with sizes."""
        start = f"{self.prefix}/{folder}" if folder else f"{self.prefix}/"
        found: dict[str, int] = {}
        pages = (
            self._client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=start)
        )
        for page in pages:
            for item in page.get("Contents", []):
                found[item["Key"][len(self.prefix) + 1 :]] = item["Size"]
        return found

    def multipart_uploads(self, folder: str = "") -> list[str]:
        """Multipart uploads neither completed nor aborted, by key."""
        start = f"{self.prefix}/{folder}" if folder else f"{self.prefix}/"
        answer = self._client().list_multipart_uploads(Bucket=self.bucket, Prefix=start)
        return sorted(u["Key"][len(self.prefix) + 1 :] for u in answer.get("Uploads", []))

    def names(self, *folders: str) -> list[PurePath]:
        """Objects and unfinished multipart uploads under these folders."""
        keys: set[str] = set()
        for folder in folders:
            keys.update(self.objects(folder + "/"))
            keys.update(self.multipart_uploads(folder + "/"))
        return [PurePosixPath(key) for key in sorted(keys)]


@functools.cache
def _client(endpoint: str, region: str, access_key: str, secret_key: str) -> Any:
    """One client per store and key for the whole test run (botocore's
    clients may be shared between threads): a client of its own for each
    look made a botocore session for each, which read its megabyte of
    service descriptions again, a third of the PostgreSQL + S3 run's CPU."""
    return get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}),
    )


_S3_PREFIXES: dict[Path, S3Prefix] = {}


def use_s3_for(storage: Path, env: dict[str, str]) -> None:
    """From now on ``storage`` names this S3 prefix (``Seaweed.env``'s
    variables) for the functions below."""
    url = urlsplit(env["QUART_APP_STORAGE_URL"])
    _S3_PREFIXES[Path(storage)] = S3Prefix(
        endpoint=env["AWS_ENDPOINT_URL"],
        region=env["AWS_REGION"],
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
        bucket=url.netloc,
        prefix=url.path.strip("/"),
    )


def s3_prefix(storage: Path) -> S3Prefix | None:
    """The S3 prefix ``storage`` stands for, or None for a directory."""
    return _S3_PREFIXES.get(Path(storage))


def storage_files(storage: Path) -> dict[str, int]:
    """Every file under the storage directory (every object under the
    prefix, and every unfinished multipart upload, size 0), with its size."""
    s3 = s3_prefix(storage)
    if s3 is not None:
        uploads = {f"multipart:{key}": 0 for key in s3.multipart_uploads()}
        return {**s3.objects(), **uploads}
    return {
        str(path.relative_to(storage)): path.stat().st_size
        for path in sorted(storage.rglob("*"))
        if path.is_file()
    }


async def everything_held(app: Quart, storage: Path) -> dict[str, object]:
    """What the app holds: every row and every stored file. Equal before and
    after a request: it stored, changed and removed nothing."""
    return {"rows": await database_rows(app), "files": storage_files(storage)}


def blob_files(storage: Path) -> list[PurePath]:
    """Published blobs (a path's ``name`` is the sha256)."""
    s3 = s3_prefix(storage)
    if s3 is not None:
        return s3.names("blobs")
    return [p for p in (storage / "blobs").rglob("*") if p.is_file()]


def temp_files(storage: Path) -> list[PurePath]:
    """Temp files and retired blobs awaiting removal (on S3 also the
    multipart uploads of temp objects and publishing markers)."""
    s3 = s3_prefix(storage)
    if s3 is not None:
        return s3.names("tmp", "trash", "publishing")
    return [p for d in ("tmp", "trash") for p in (storage / d).iterdir()]


def partial_files(storage: Path) -> list[PurePath]:
    """What resumable uploads hold (on S3 their tails, parts and multipart
    uploads)."""
    s3 = s3_prefix(storage)
    if s3 is not None:
        return s3.names("partial")
    return list((storage / "partial").iterdir())


async def assert_nothing_stored(app: Quart, storage: Path) -> None:
    assert await count_rows(app, File) == 0
    assert await count_rows(app, Blob) == 0
    assert await count_rows(app, QuotaReservation) == 0
    assert blob_files(storage) == []
    assert temp_files(storage) == []


def _count(db: sqlite3.Connection, table: str) -> int:
    """Rows of ``table``; for users, not counting the operator account (made
    at startup when an admin key is configured, as every test server has)."""
    if table == "users":
        query = "SELECT count(*) FROM users WHERE email != ?"
        count: int = db.execute(query, (OPERATOR_EMAIL,)).fetchone()[0]
    else:
        count = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return count


def rows(server: RunningServer, table: str) -> int:
    """Rows in a table of a running server's database, read beside it (for
    users, without the operator account)."""
    with closing(sqlite3.connect(server.database_path)) as db:
        return _count(db, table)


TABLES = (
    "users",
    "files",
    "blobs",
    "batches",
    "uploads",
    "idempotency_records",
    "quota_reservations",
)


def server_holds(server: RunningServer) -> dict[str, object]:
    """Everything the server holds: row counts (users without the operator
    account) and files under storage."""
    with closing(sqlite3.connect(f"file:{server.database_path}?mode=ro", uri=True)) as db:
        rows = {t: _count(db, t) for t in TABLES}
    files = sorted(
        str(p.relative_to(server.storage_dir)) for p in server.storage_dir.rglob("*") if p.is_file()
    )
    return {"rows": {t: n for t, n in rows.items() if n}, "files": files}


def assert_server_holds(server: RunningServer, before: object, timeout: float = 10.0) -> None:
    """Nothing may be left once the server is done with the request (its
    cleanup can finish just after the client has its answer). Compared with
    what was there before, so that a failing case fails alone."""
    deadline = time.monotonic() + timeout
    while (left := server_holds(server)) != before:
        assert time.monotonic() < deadline, f"left behind: {left}, before: {before}"
        time.sleep(0.05)
