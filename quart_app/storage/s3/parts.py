"""Cutting a stream into fixed-size parts, each hashed and uploaded while the
next one is gathered: one part in flight, one gathering, so an upload holds
about two parts of memory whatever its size.

Hashing runs in a worker thread (hashlib releases the GIL on large
buffers), before the part's upload, in order: the digests see the bytes in
the order they arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

# Uploads a part: (part number from 1, bytes) -> its ETag.
UploadPart = Callable[[int, bytes], Awaitable[str]]


def _update(hashes: list[Any], data: bytes | memoryview) -> None:
    for digest in hashes:
        digest.update(data)


class PartPipeline:
    def __init__(
        self, part_bytes: int, hashes: list[Any], upload: UploadPart, first_number: int = 1
    ) -> None:
        self.part_bytes = part_bytes
        self.hashes = hashes
        self._upload = upload
        # Gathered bytes, by reference (a part is joined from them once: the
        # one copy); the first ``_hashed`` of them have been hashed already.
        self._chunks: list[bytes | memoryview] = []
        self._gathered = 0
        self._hashed = 0
        self.next_number = first_number
        self.etags: list[tuple[int, str]] = []
        self._in_flight: asyncio.Future[None] | None = None

    def preload(self, data: bytes) -> None:
        """Bytes that come first and are already hashed (a tus tail)."""
        assert not self._chunks, "preload() before append()"
        self._chunks.append(data)
        self._gathered = self._hashed = len(data)

    def _take(self, size: int) -> bytes:
        taken: list[bytes | memoryview] = []
        need = size
        while need:
            chunk = self._chunks[0]
            if len(chunk) <= need:
                taken.append(self._chunks.pop(0))
                need -= len(chunk)
            else:
                view = memoryview(chunk)
                taken.append(view[:need])
                self._chunks[0] = view[need:]
                need = 0
        self._gathered -= size
        return taken[0] if len(taken) == 1 and isinstance(taken[0], bytes) else b"".join(taken)

    async def append(self, data: bytes) -> None:
        """``data`` is kept by reference: the caller must not change it."""
        self._chunks.append(data)
        self._gathered += len(data)
        while self._gathered >= self.part_bytes:
            await self.wait()
            part = self._take(self.part_bytes)
            hashed = min(self._hashed, len(part))
            self._hashed -= hashed
            number, self.next_number = self.next_number, self.next_number + 1
            self._in_flight = asyncio.ensure_future(self._hash_and_upload(number, part, hashed))

    async def _hash_and_upload(self, number: int, part: bytes, hashed: int) -> None:
        if hashed < len(part):
            await asyncio.to_thread(_update, self.hashes, memoryview(part)[hashed:])
        self.etags.append((number, await self._upload(number, part)))

    async def wait(self) -> None:
        """The part in flight, uploaded (its error raised here)."""
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            await in_flight

    async def hash_rest(self) -> None:
        """Everything appended so far has passed through the hashes."""
        await self.wait()
        if self._hashed < self._gathered:
            rest = self._take(self._gathered)
            await asyncio.to_thread(_update, self.hashes, memoryview(rest)[self._hashed :])
            self._chunks, self._gathered, self._hashed = [rest], len(rest), len(rest)

    def take_rest(self) -> bytes:
        """The bytes short of a whole part (hash_rest first)."""
        rest = self._take(self._gathered)
        self._hashed = 0
        return bytes(rest)

    async def settle(self) -> None:
        """Let the part in flight end; its error no longer matters."""
        self._chunks, self._gathered, self._hashed = [], 0, 0
        with contextlib.suppress(Exception):
            await self.wait()
