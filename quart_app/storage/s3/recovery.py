"""Crash recovery and the orphan scan of the S3 layout (store.py).

There are no process ids to ask across servers, so what is in flight is
told from what is abandoned by age alone: older than the longest a request
body may take (``temp_max_age``, BODY_DEADLINE plus a grace).

- ``trash/<sha256>.<token>``: a blob retired inside a transaction. A blob
  row still standing means the transaction never committed: the bytes go
  back to their address (unless they are there already: a crash between
  the copy and the delete of a retire). Otherwise they are purged.
- ``publishing/<sha256>``: a blob published inside a transaction that had
  not committed yet. Once abandoned, the blob is removed if no row has
  that sha256, and the marker goes.
- ``tmp/...`` objects and multipart uploads (a writer's, a composition's)
  that were never completed nor aborted: removed once abandoned.

Recovery runs inside a write transaction (ops/integrity.py), so no writer
is half-way through one then.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import TYPE_CHECKING

from quart_app.storage import HasRow
from quart_app.storage.s3.client import S3_ERRORS, is_missing

if TYPE_CHECKING:
    from quart_app.storage.s3.store import S3BlobStore


def _old(last_modified: object, older_than: float) -> bool:
    timestamp = getattr(last_modified, "timestamp", None)
    return timestamp is not None and timestamp() < time.time() - older_than


async def settle_leftovers(store: S3BlobStore, temp_max_age: float, has_row: HasRow) -> list[str]:
    done: list[str] = []
    loc = store.location
    async for key, _ in store.list_keys(loc.key("trash") + "/"):
        token = key.rsplit("/", 1)[1]
        sha256 = token.split(".", 1)[0]
        if len(sha256) == 64 and await has_row(sha256):
            size = await store.head_size(key)
            if size is not None:
                await store.copy(key, store.blob_key(sha256), size, if_absent=True)
            await store.delete_key(key)
            done.append(f"restored blob {sha256} from trash (its transaction never committed)")
        else:
            await store.delete_key(key)
            done.append(f"purged trash {token}")
    async for key, modified in store.list_keys(loc.key("publishing") + "/"):
        if not _old(modified, temp_max_age):
            continue  # its transaction may still be running, on another server
        sha256 = key.rsplit("/", 1)[1]
        if len(sha256) == 64 and not await has_row(sha256):
            await store.delete_key(store.blob_key(sha256))
            done.append(f"removed blob {sha256}: published, but its row never committed")
        await store.delete_key(key)
    return done


async def abandoned_temps(store: S3BlobStore, temp_max_age: float) -> list[tuple[str, str | None]]:
    """(key, multipart upload id or None) of every abandoned temp object and
    every abandoned multipart upload under the prefix."""
    found: list[tuple[str, str | None]] = []
    async for key, modified in store.list_keys(store.location.key("tmp") + "/"):
        if _old(modified, temp_max_age):
            found.append((key, None))
    client = await store.client()
    paginator = client.get_paginator("list_multipart_uploads")
    prefix = store.location.prefix + "/" if store.location.prefix else ""
    async for page in paginator.paginate(Bucket=store.location.bucket, Prefix=prefix):
        for upload in page.get("Uploads", []):
            if _old(upload.get("Initiated"), temp_max_age):
                found.append((upload["Key"], upload["UploadId"]))
    return found


async def remove_abandoned_temps(store: S3BlobStore, temp_max_age: float) -> list[str]:
    done: list[str] = []
    client = await store.client()
    for key, upload_id in await abandoned_temps(store, temp_max_age):
        name = store.location.relative(key)
        if upload_id is None:
            await store.delete_key(key)
            done.append(f"removed abandoned temp object {name}")
        else:
            try:
                await client.abort_multipart_upload(
                    Bucket=store.location.bucket, Key=key, UploadId=upload_id
                )
            except S3_ERRORS as error:
                if not is_missing(error):
                    raise
            done.append(f"aborted abandoned multipart upload of {name}")
    return done


async def digest(store: S3BlobStore, sha256: str) -> tuple[str, int] | None:
    client = await store.client()
    try:
        answer = await client.get_object(Bucket=store.location.bucket, Key=store.blob_key(sha256))
    except S3_ERRORS as error:
        if is_missing(error):
            return None
        raise
    hasher = hashlib.sha256()
    size = 0
    body = answer["Body"]
    async with body:
        while chunk := await body.read(8 * 1024 * 1024):
            await asyncio.to_thread(hasher.update, chunk)
            size += len(chunk)
    return hasher.hexdigest(), size


async def names_under(store: S3BlobStore, folder: str) -> list[str]:
    prefix = store.location.key(folder) + "/"
    return sorted([key[len(prefix) :] async for key, _ in store.list_keys(prefix)])


async def stale_partials(store: S3BlobStore, live: set[str], temp_max_age: float) -> list[str]:
    """Upload ids under partial/ that no live upload names, whose newest
    object is older than the age (the info object exists a moment before
    its upload's row)."""
    newest: dict[str, float] = {}
    prefix = store.location.key("partial") + "/"
    async for key, modified in store.list_keys(prefix):
        upload_id = key[len(prefix) :].split("/", 1)[0]
        newest[upload_id] = max(newest.get(upload_id, 0.0), modified.timestamp())
    cutoff = time.time() - temp_max_age
    return sorted(u for u, t in newest.items() if u not in live and t < cutoff)
