"""S3 BlobStore and ResumableStore.

Layout under ``s3://<bucket>/<prefix>/``::

    blobs/<sha256>            published blobs, by content address
    tmp/<time>-<random>       uploads in flight (multipart upload target)
    publishing/<sha256>       a blob published by a transaction not yet committed
    trash/<sha256>.<token>    blobs retired by a transaction not yet committed
    partial/<upload id>/...   resumable (tus) uploads: partials.py

The writer (writer.py) streams to ``tmp/`` and publishes by a conditional
server-side copy; retire/restore are server-side copies too (S3 has no
rename), so a delete never removes bytes that a concurrent upload of the
same content is about to reference: the address is empty before the
deleting transaction commits, exactly as on disk (services/files.py).

Unlike a file descriptor, an open S3 reader does not pin its bytes: a
download that opened a blob a moment before a delete purged it fails
part-way (the connection is cut) rather than delivering it. Crash
recovery and the orphan scan are in recovery.py.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Collection
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from quart_app.storage import BlobMissing, HasRow
from quart_app.storage.s3 import recovery
from quart_app.storage.s3.client import S3_ERRORS, S3Location, is_exists, is_missing, unwritable
from quart_app.storage.s3.partials import S3Partials, S3PartialWriter
from quart_app.storage.s3.writer import S3BlobWriter, temp_name

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

READ_CHUNK_BYTES = 1024 * 1024
# S3's limit for one CopyObject; larger blobs are copied in parts.
COPY_OBJECT_MAX_BYTES = 5 * 1024**3
COPY_PART_BYTES = 512 * 1024**2
# Server-side copies in flight at once while composing a blob.
COPY_CONCURRENCY = 8
DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys


class S3Credentials:
    def __init__(
        self,
        endpoint: str | None,
        region: str | None,
        access_key: str | None,
        secret_key: str | None,
        session_token: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.region = region
        self.access_key = access_key
        self.secret_key = secret_key
        self.session_token = session_token


class S3BlobReader:
    """A blob's key and size; ranges are streamed by GET with Range."""

    def __init__(self, store: S3BlobStore, key: str, size: int) -> None:
        self._store = store
        self._key = key
        self.size = size

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        end = min(end, self.size)
        if start >= end:
            return
        client = await self._store.client()
        try:
            answer = await client.get_object(
                Bucket=self._store.location.bucket, Key=self._key, Range=f"bytes={start}-{end - 1}"
            )
        except S3_ERRORS as error:
            raise unwritable(error) from error
        body = answer["Body"]
        async with body:
            while chunk := await body.read(READ_CHUNK_BYTES):
                yield chunk

    def close(self) -> None:
        """Nothing is held between reads."""


class S3BlobStore:
    def __init__(
        self,
        location: S3Location,
        credentials: S3Credentials,
        part_bytes: int,
        inline_bytes: int = 0,
    ) -> None:
        self.location = location
        self.credentials = credentials
        self.part_bytes = part_bytes
        # Blobs up to this size are kept in their database rows, as on local
        # disk (storage/__init__.py): no object, no request to the store.
        self.inline_bytes = min(inline_bytes, part_bytes)
        self.partials = S3Partials(self)
        self._client: S3Client | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._opening = asyncio.Lock()
        self._tasks: set[asyncio.Future[Any]] = set()

    def describe(self) -> str:
        return f"object store {self.location.url}"

    # -- the client ----------------------------------------------------------
    async def client(self) -> S3Client:
        """The store's client, opened on first use (on the running loop)."""
        if self._client is not None:
            return self._client
        async with self._opening:
            if self._client is None:
                from quart_app.storage.s3.client import s3_client

                stack = AsyncExitStack()
                c = self.credentials
                self._client = await stack.enter_async_context(
                    s3_client(c.endpoint, c.region, c.access_key, c.secret_key, c.session_token)
                )
                self._exit_stack = stack
        return self._client

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        stack, self._exit_stack, self._client = self._exit_stack, None, None
        if stack is not None:
            await stack.aclose()

    def keep_task(self, task: asyncio.Future[Any]) -> None:
        """Hold a cleanup running in the background until it ends (and let
        close() wait for it)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # -- keys ----------------------------------------------------------------
    def blob_key(self, sha256: str) -> str:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 hex digest")
        return self.location.key("blobs", sha256)

    def marker_key(self, sha256: str) -> str:
        return self.location.key("publishing", sha256)

    async def read_key(self, key: str) -> bytes:
        client = await self.client()
        answer = await client.get_object(Bucket=self.location.bucket, Key=key)
        body = answer["Body"]
        async with body:
            return await body.read()

    async def head_size(self, key: str) -> int | None:
        client = await self.client()
        try:
            answer = await client.head_object(Bucket=self.location.bucket, Key=key)
        except S3_ERRORS as error:
            if is_missing(error):
                return None
            raise
        return answer["ContentLength"]

    async def delete_key(self, key: str) -> None:
        """Idempotent: S3 answers a delete of a missing key with success."""
        client = await self.client()
        await client.delete_object(Bucket=self.location.bucket, Key=key)

    async def delete_keys(self, keys: list[str]) -> None:
        client = await self.client()
        for i in range(0, len(keys), DELETE_BATCH):
            batch = keys[i : i + DELETE_BATCH]
            await client.delete_objects(
                Bucket=self.location.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )

    async def list_keys(self, prefix: str) -> AsyncIterator[tuple[str, Any]]:
        """(key, last modified) of every object under ``prefix``."""
        client = await self.client()
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.location.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"], item["LastModified"]

    async def copy(self, source: str, target: str, size: int, if_absent: bool) -> bool:
        """Server-side copy; with ``if_absent``, False when ``target`` exists."""
        if size > COPY_OBJECT_MAX_BYTES:
            ranges = [
                (start, min(start + COPY_PART_BYTES, size))
                for start in range(0, size, COPY_PART_BYTES)
            ]
            return await self._compose([(source, r) for r in ranges], target, if_absent)
        client = await self.client()
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            await client.copy_object(
                Bucket=self.location.bucket,
                Key=target,
                CopySource={"Bucket": self.location.bucket, "Key": source},
                **extra,
            )
        except S3_ERRORS as error:
            if if_absent and is_exists(error):
                return False
            raise
        return True

    async def _compose(
        self,
        sources: list[tuple[str, tuple[int, int] | None]],
        target: str,
        if_absent: bool,
    ) -> bool:
        """One multipart upload of server-side copies (each source whole, or
        a byte range of it), completed only when every part is in place."""
        client = await self.client()
        bucket = self.location.bucket
        upload_id = (await client.create_multipart_upload(Bucket=bucket, Key=target))["UploadId"]
        limit = asyncio.Semaphore(COPY_CONCURRENCY)

        async def copy_part(number: int, source: str, span: tuple[int, int] | None) -> str:
            extra: dict[str, Any] = {}
            if span is not None:
                extra["CopySourceRange"] = f"bytes={span[0]}-{span[1] - 1}"
            async with limit:
                answer = await client.upload_part_copy(
                    Bucket=bucket,
                    Key=target,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": bucket, "Key": source},
                    **extra,
                )
            return answer["CopyPartResult"]["ETag"]

        try:
            etags = await asyncio.gather(
                *(copy_part(n, source, span) for n, (source, span) in enumerate(sources, 1))
            )
            extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
            await client.complete_multipart_upload(
                Bucket=bucket,
                Key=target,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]
                },
                **extra,
            )
        except BaseException as error:
            abort = asyncio.ensure_future(
                client.abort_multipart_upload(Bucket=bucket, Key=target, UploadId=upload_id)
            )
            self.keep_task(abort)
            if if_absent and is_exists(error):
                await abort
                return False
            raise
        return True

    async def publish_object(self, source: str, sha256: str, size: int) -> bool:
        """Copy ``source`` to the blob's address unless it is taken. The
        marker first: a crash before the row commits leaves it naming the
        blob (recovery.py)."""
        client = await self.client()
        await client.put_object(Bucket=self.location.bucket, Key=self.marker_key(sha256), Body=b"")
        return await self.copy(source, self.blob_key(sha256), size, if_absent=True)

    async def compose(self, sources: list[str], sha256: str, size: int) -> bool:
        client = await self.client()
        bucket = self.location.bucket
        await client.put_object(Bucket=bucket, Key=self.marker_key(sha256), Body=b"")
        target = self.blob_key(sha256)
        if not sources:  # the empty blob
            try:
                await client.put_object(Bucket=bucket, Key=target, Body=b"", IfNoneMatch="*")
            except S3_ERRORS as error:
                if is_exists(error):
                    return False
                raise
            return True
        if len(sources) == 1:
            return await self.copy(sources[0], target, size, if_absent=True)
        return await self._compose([(source, None) for source in sources], target, True)

    async def settle_publish(self, sha256: str) -> None:
        """The transaction that published ``sha256`` committed."""
        try:
            await self.delete_key(self.marker_key(sha256))
        except S3_ERRORS as error:
            raise unwritable(error) from error

    async def remove_temp(self, key: str, upload_id: str | None) -> None:
        client = await self.client()
        if upload_id is not None:
            await client.abort_multipart_upload(
                Bucket=self.location.bucket, Key=key, UploadId=upload_id
            )
        await self.delete_key(key)

    # -- BlobStore -------------------------------------------------------------
    def writer(self, max_bytes: int) -> S3BlobWriter:
        return S3BlobWriter(self, max_bytes)

    async def stored(self, sha256s: Collection[str]) -> set[str]:
        shas = list(sha256s)
        try:
            sizes = await asyncio.gather(*(self.head_size(self.blob_key(s)) for s in shas))
        except S3_ERRORS as error:
            raise unwritable(error) from error
        return {sha for sha, size in zip(shas, sizes, strict=True) if size is not None}

    async def open(self, sha256: str) -> S3BlobReader:
        try:
            key = self.blob_key(sha256)
            size = await self.head_size(key)
            if size is None:
                # Retired a moment ago by a replace or delete, not yet purged:
                # the bytes of a row that was committed a moment ago.
                async for key, _ in self.list_keys(self.location.key("trash", sha256 + ".")):
                    size = await self.head_size(key)
                    if size is not None:
                        break
        except S3_ERRORS as error:
            raise unwritable(error) from error
        if size is None:
            raise BlobMissing(sha256)
        return S3BlobReader(self, key, size)

    async def retire(self, sha256: str) -> str | None:
        token = f"{sha256}.{secrets.token_hex(8)}"
        source = self.blob_key(sha256)
        try:
            size = await self.head_size(source)
            if size is None:
                return None
            await self.copy(source, self.location.key("trash", token), size, if_absent=False)
            await self.delete_key(source)
        except S3_ERRORS as error:
            raise unwritable(error) from error
        return token

    async def restore(self, token: str) -> None:
        sha256 = token.split(".", 1)[0]
        source = self.location.key("trash", token)
        try:
            size = await self.head_size(source)
            if size is None:
                raise BlobMissing(token)
            await self.copy(source, self.blob_key(sha256), size, if_absent=True)
            await self.delete_key(source)
        except S3_ERRORS as error:
            raise unwritable(error) from error

    async def purge(self, token: str) -> None:
        try:
            await self.delete_key(self.location.key("trash", token))
        except S3_ERRORS as error:
            raise unwritable(error) from error

    async def probe(self) -> None:
        """A small object written and removed under tmp/ (recovery removes it
        if the process dies in between)."""
        key = self.location.key("tmp", temp_name() + "-probe")
        try:
            client = await self.client()
            await client.put_object(Bucket=self.location.bucket, Key=key, Body=b"ok")
            await self.delete_key(key)
        except S3_ERRORS as error:
            raise unwritable(error) from error

    # -- ResumableStore ----------------------------------------------------------
    async def create_partial(self, upload_id: str) -> None:
        await self.partials.create(upload_id)

    def partial_writer(self, upload_id: str, offset: int, hashes: list[Any]) -> S3PartialWriter:
        return S3PartialWriter(self.partials, upload_id, offset, hashes)

    async def hash_partial(self, upload_id: str, length: int) -> Any:
        return await self.partials.hash(upload_id, length)

    async def publish_partial(self, upload_id: str, sha256: str, length: int) -> bool:
        return await self.partials.publish(upload_id, sha256, length)

    async def unpublish_partial(self, upload_id: str, sha256: str) -> None:
        """The parts stay: a retry of the completing PATCH composes again."""
        try:
            await self.delete_key(self.blob_key(sha256))
        except S3_ERRORS as error:
            raise unwritable(error) from error
        await self.settle_publish(sha256)

    async def delete_partial(self, upload_id: str) -> None:
        try:
            await self.partials.delete(upload_id)
        except S3_ERRORS as error:
            raise unwritable(error) from error

    # -- crash recovery and check (MaintainedStore): recovery.py ----------------
    async def settle_leftovers(self, temp_max_age: float, has_row: HasRow) -> list[str]:
        try:
            return await recovery.settle_leftovers(self, temp_max_age, has_row)
        except S3_ERRORS as error:
            raise unwritable(error) from error

    async def remove_abandoned_temps(self, temp_max_age: float) -> list[str]:
        try:
            return await recovery.remove_abandoned_temps(self, temp_max_age)
        except S3_ERRORS as error:
            raise unwritable(error) from error

    async def digest(self, sha256: str) -> tuple[str, int] | None:
        return await recovery.digest(self, sha256)

    async def blob_names(self) -> set[str]:
        return set(await recovery.names_under(self, "blobs"))

    async def abandoned_temps(self, temp_max_age: float) -> list[str]:
        found = await recovery.abandoned_temps(self, temp_max_age)
        return sorted(
            self.location.relative(key) + (" (multipart upload)" if upload_id else "")
            for key, upload_id in found
        )

    async def trash_names(self) -> list[str]:
        return await recovery.names_under(self, "trash")

    async def stale_partials(self, live: set[str], temp_max_age: float) -> list[str]:
        return await recovery.stale_partials(self, live, temp_max_age)

    async def partial_intact(self, upload_id: str, length: int) -> bool:
        return await self.partials.intact(upload_id, length)

    async def remove_blob(self, sha256: str) -> None:
        await self.delete_key(self.blob_key(sha256))

    async def remove_partial(self, name: str) -> None:
        await self.partials.delete(name)
