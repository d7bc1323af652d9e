"""Resumable (tus) uploads on S3.

An incomplete multipart upload cannot be read back, and S3 refuses parts
under 5 MiB except the last, so a partial is kept as plain objects under
``partial/<upload id>/``:

    info                 {"part_bytes": P}, written by create_partial
    part-<k>             bytes [(k-1)P, kP): whole parts, k from 1
    tail-<offset>        the bytes past the last whole part (< P) at that offset

At a committed offset O the upload is ``part-1 .. part-(O // P)`` and, when
O is not a multiple of P, ``tail-<O>``. A PATCH reads that tail back,
prepends it to its bytes, uploads every whole part as it fills, and at the
end stores what is short of a part as ``tail-<new offset>``; only then is
the new offset committed (make_durable), so it only ever covers durable
bytes. Parts a PATCH wrote past the committed offset (a crash, a rollback)
are overwritten by the next PATCH, which rewrites from the same position.
Tails of older offsets are deleted when the next PATCH takes the upload.
Who writes is decided by the upload's lease in the database
(services/upload_leases.py); the store keeps no lock of its own.

Completion composes the blob at ``blobs/<sha256>`` with one multipart
upload of server-side copies (UploadPartCopy) of the parts and the tail,
completed with ``If-None-Match: *``: nothing is visible at the address
before it is whole, and identical bytes already there win.

Rebuilding the running sha256 on a server that does not hold it (after a
restart, or when another server took the previous PATCH) reads the whole
partial back once: one GET per part.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

from quart_app.storage import BlobMissing
from quart_app.storage.s3.client import S3_ERRORS, is_missing, unwritable
from quart_app.storage.s3.parts import PartPipeline

if TYPE_CHECKING:
    from quart_app.storage.s3.store import S3BlobStore


def part_name(number: int) -> str:
    return f"part-{number:05d}"


def tail_name(offset: int) -> str:
    return f"tail-{offset:020d}"


class S3Partials:
    """The partial-upload half of the S3 store."""

    def __init__(self, store: S3BlobStore) -> None:
        self.store = store

    def key(self, upload_id: str, name: str = "") -> str:
        if not upload_id.replace("-", "").replace("_", "").isalnum():
            raise ValueError("not an upload id")
        return self.store.location.key("partial", upload_id, name)

    async def create(self, upload_id: str) -> None:
        body = json.dumps({"part_bytes": self.store.part_bytes}).encode()
        try:
            client = await self.store.client()
            await client.put_object(
                Bucket=self.store.location.bucket, Key=self.key(upload_id, "info"), Body=body
            )
        except S3_ERRORS as error:
            raise unwritable(error) from error

    async def part_bytes(self, upload_id: str) -> int:
        """The part size the upload was created with. Raises BlobMissing."""
        try:
            data = await self.store.read_key(self.key(upload_id, "info"))
        except S3_ERRORS as error:
            if is_missing(error):
                raise BlobMissing(upload_id) from None
            raise unwritable(error) from error
        size: int = json.loads(data)["part_bytes"]
        return size

    async def read(self, upload_id: str, name: str) -> bytes:
        try:
            return await self.store.read_key(self.key(upload_id, name))
        except S3_ERRORS as error:
            if is_missing(error):
                raise BlobMissing(f"{upload_id}/{name}") from None
            raise unwritable(error) from error

    async def hash(self, upload_id: str, length: int) -> Any:
        import hashlib

        part_bytes = await self.part_bytes(upload_id)
        digest = hashlib.sha256()
        whole, rest = divmod(length, part_bytes)
        names = [part_name(k) for k in range(1, whole + 1)]
        if rest:
            names.append(tail_name(length))
        for name in names:
            data = await self.read(upload_id, name)
            await asyncio.to_thread(digest.update, data)
            del data
        return digest

    async def drop_old_tails(self, upload_id: str, offset: int) -> None:
        keep = self.key(upload_id, tail_name(offset))
        prefix = self.key(upload_id, "tail-")
        stale = [key async for key, _ in self.store.list_keys(prefix) if key != keep]
        await self.store.delete_keys(stale)

    # -- completion --------------------------------------------------------
    async def publish(self, upload_id: str, sha256: str, length: int) -> bool:
        """Compose the partial at ``blobs/<sha256>``; False when identical
        bytes are already there (the partial is left as it is)."""
        try:
            part_bytes = await self.part_bytes(upload_id)
            whole, rest = divmod(length, part_bytes)
            sources = [self.key(upload_id, part_name(k)) for k in range(1, whole + 1)]
            if rest:
                sources.append(self.key(upload_id, tail_name(length)))
            return await self.store.compose(sources, sha256, length)
        except S3_ERRORS as error:
            raise unwritable(error) from error

    async def intact(self, upload_id: str, length: int) -> bool:
        """``info``, every whole part below ``length`` and its tail are there."""
        try:
            part_bytes = await self.part_bytes(upload_id)
        except BlobMissing:
            return False
        whole, rest = divmod(length, part_bytes)
        needed = {part_name(k) for k in range(1, whole + 1)}
        if rest:
            needed.add(tail_name(length))
        prefix = self.key(upload_id) + "/"
        present = {key[len(prefix) :] async for key, _ in self.store.list_keys(prefix)}
        return needed <= present

    async def delete(self, upload_id: str) -> None:
        keys = [key async for key, _ in self.store.list_keys(self.key(upload_id) + "/")]
        await self.store.delete_keys(keys)


class S3PartialWriter:
    """Appends one PATCH to a partial upload at ``offset``."""

    def __init__(self, partials: S3Partials, upload_id: str, offset: int, hashes: list[Any]):
        self._partials = partials
        self._upload_id = upload_id
        self.start = offset
        self.offset = offset
        self._hashes = hashes
        self._pipeline: PartPipeline | None = None

    async def acquire(self) -> None:
        """Reads the tail back; BlobMissing when the partial is gone."""
        partials, upload_id = self._partials, self._upload_id
        part_bytes = await partials.part_bytes(upload_id)
        whole, rest = divmod(self.start, part_bytes)
        pipeline = PartPipeline(part_bytes, self._hashes, self._upload_part, whole + 1)
        if rest:
            pipeline.preload(await partials.read(upload_id, tail_name(self.start)))
        await partials.drop_old_tails(upload_id, self.start)
        self._pipeline = pipeline

    async def _upload_part(self, number: int, data: bytes) -> str:
        client = await self._partials.store.client()
        await client.put_object(
            Bucket=self._partials.store.location.bucket,
            Key=self._partials.key(self._upload_id, part_name(number)),
            Body=data,
        )
        return part_name(number)

    @property
    def _parts(self) -> PartPipeline:
        assert self._pipeline is not None, "acquire() first"
        return self._pipeline

    async def write(self, data: bytes) -> None:
        self.offset += len(data)
        try:
            await self._parts.append(data)
        except S3_ERRORS as error:
            raise unwritable(error) from error

    async def flush(self) -> None:
        try:
            await self._parts.hash_rest()
        except S3_ERRORS as error:
            raise unwritable(error) from error

    async def make_durable(self) -> int:
        """Every whole part uploaded, the rest stored as this offset's tail."""
        try:
            await self._parts.hash_rest()
            rest = self._parts.take_rest()
            if rest:
                client = await self._partials.store.client()
                await client.put_object(
                    Bucket=self._partials.store.location.bucket,
                    Key=self._partials.key(self._upload_id, tail_name(self.offset)),
                    Body=rest,
                )
        except S3_ERRORS as error:
            raise unwritable(error) from error
        return self.offset

    async def roll_back(self) -> None:
        """Back to where this writer started: the committed offset still
        names its own parts and tail; what this writer uploaded past them
        is removed (or would be overwritten by the next PATCH)."""
        pipeline = self._parts
        await pipeline.settle()
        first = self.start // pipeline.part_bytes + 1
        written = [
            self._partials.key(self._upload_id, part_name(k))
            for k in range(first, pipeline.next_number)
        ]
        with contextlib.suppress(*S3_ERRORS):
            await self._partials.store.delete_keys(written)
        self._pipeline = PartPipeline(pipeline.part_bytes, self._hashes, self._upload_part, first)
        self.offset = self.start

    def release(self) -> None:
        """Nothing is held: the lease is the database's."""
