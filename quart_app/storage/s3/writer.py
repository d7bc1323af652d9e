"""A new blob on S3: streamed as a multipart upload to a temp key, published
by a conditional server-side copy to its content address.

- ``write``: parts of exactly ``part_bytes`` (the last one shorter), hashed
  and uploaded while the next is gathered (parts.py). The multipart upload
  starts with the first whole part; a blob shorter than one part is one PUT.
- ``seal``: the last part, then CompleteMultipartUpload: the bytes are
  durable at ``tmp/<id>``, not visible at any content address. A blob of
  at most the store's ``inline_bytes`` is handed back instead, for its
  database row (storage/__init__.py): no request to the store at all.
- ``publish``: a marker ``publishing/<sha256>`` first (crash recovery:
  recovery.py), then CopyObject to ``blobs/<sha256>`` with
  ``If-None-Match: *``. A 412 means identical bytes are already there: this
  copy is the loser and is dropped. Either way the temp object is deleted.
- ``discard``: aborts the multipart upload and deletes the temp object, so a
  failed upload leaves nothing in the bucket.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from typing import TYPE_CHECKING

from quart_app.storage import BlobTooLarge, SealedBlob
from quart_app.storage.s3.client import S3_ERRORS, unwritable
from quart_app.storage.s3.parts import PartPipeline

if TYPE_CHECKING:
    from quart_app.storage.s3.store import S3BlobStore


def temp_name() -> str:
    """Sortable by start time; random beyond that (several servers)."""
    return f"{time.time_ns():020d}-{secrets.token_hex(12)}"


class S3BlobWriter:
    def __init__(self, store: S3BlobStore, max_bytes: int) -> None:
        self._store = store
        self._max_bytes = max_bytes
        self._hash = hashlib.sha256()
        self.temp_key = store.location.key("tmp", temp_name())
        self.size = 0
        self._upload_id: str | None = None
        self._parts = PartPipeline(store.part_bytes, [self._hash], self._upload_part)
        self._sealed: SealedBlob | None = None
        self._temp_exists = False
        self._published: str | None = None

    async def _upload_part(self, number: int, data: bytes) -> str:
        client = await self._store.client()
        if self._upload_id is None:
            created = await client.create_multipart_upload(
                Bucket=self._store.location.bucket, Key=self.temp_key
            )
            self._upload_id = created["UploadId"]
        answer = await client.upload_part(
            Bucket=self._store.location.bucket,
            Key=self.temp_key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
        )
        return answer["ETag"]

    async def write(self, data: bytes) -> None:
        if self.size + len(data) > self._max_bytes:
            raise BlobTooLarge(self._max_bytes)
        self.size += len(data)
        try:
            await self._parts.append(data)
        except S3_ERRORS as error:
            raise unwritable(error) from error

    async def seal(self) -> SealedBlob:
        try:
            await self._parts.hash_rest()
            rest = self._parts.take_rest()
            inline = self._store.inline_bytes
            if inline and self._upload_id is None and self.size <= inline:
                self._sealed = SealedBlob(self._hash.hexdigest(), self.size, rest)
                return self._sealed
            client = await self._store.client()
            bucket = self._store.location.bucket
            if self._upload_id is None:
                await client.put_object(Bucket=bucket, Key=self.temp_key, Body=rest)
            else:
                if rest:
                    number = self._parts.next_number
                    self._parts.etags.append((number, await self._upload_part(number, rest)))
                await client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self.temp_key,
                    UploadId=self._upload_id,
                    MultipartUpload={
                        "Parts": [
                            {"PartNumber": n, "ETag": etag} for n, etag in sorted(self._parts.etags)
                        ]
                    },
                )
                self._upload_id = None
            self._temp_exists = True
        except S3_ERRORS as error:
            raise unwritable(error) from error
        self._sealed = SealedBlob(self._hash.hexdigest(), self.size)
        return self._sealed

    async def publish(self) -> bool:
        assert self._sealed is not None, "publish() before seal()"
        assert self._sealed.content is None, "a blob kept in its row has no object to publish"
        sha256 = self._sealed.sha256
        try:
            created = await self._store.publish_object(self.temp_key, sha256, self.size)
            await self._store.delete_key(self.temp_key)
        except S3_ERRORS as error:
            raise unwritable(error) from error
        self._temp_exists = False
        if created:
            self._published = sha256
        return created

    async def unpublish(self) -> None:
        if self._published is not None:
            sha256, self._published = self._published, None
            await self._store.delete_key(self._store.blob_key(sha256))
            await self._store.settle_publish(sha256)

    async def settle(self) -> None:
        if self._published is not None:
            await self._store.settle_publish(self._published)

    async def discard(self) -> None:
        """Abort the multipart upload, delete the temp object. Shielded: it
        runs on error and cancellation paths, and must finish even if the
        task awaiting it is cancelled (what cannot be removed now, a store
        that is down, recovery removes later: recovery.py)."""
        await self._parts.settle()
        upload_id, self._upload_id = self._upload_id, None
        temp_exists, self._temp_exists = self._temp_exists, False
        if upload_id is None and not temp_exists:
            return
        cleanup = asyncio.ensure_future(self._store.remove_temp(self.temp_key, upload_id))
        self._store.keep_task(cleanup)
        await asyncio.shield(cleanup)
