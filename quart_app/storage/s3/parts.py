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


def _update(hashes: list[Any], data: bytes) -> None:
    for digest in hashes:
        digest.update(data)


class PartPipeline:
    def __init__(
        self, part_bytes: int, hashes: list[Any], upload: UploadPart, first_number: int = 1
    ) -> None:
        self.part_bytes = part_bytes
        self.hashes = hashes
        self._upload = upload
        self._buffer = bytearray()
        self._unhashed = 0  # bytes at the end of the buffer not yet hashed
        self.next_number = first_number
        self.etags: list[tuple[int, str]] = []
        self._in_flight: asyncio.Future[None] | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def preload(self, data: bytes) -> None:
        """Bytes that come first and are already hashed (a tus tail)."""
        self._buffer += data

    async def append(self, data: bytes) -> None:
        self._buffer += data
        self._unhashed += len(data)
        while len(self._buffer) >= self.part_bytes:
            await self.wait()
            # The unhashed bytes are the buffer's last ones (a preloaded
            # tail, already hashed, comes first).
            hashed = len(self._buffer) - self._unhashed
            with memoryview(self._buffer) as view:
                part = bytes(view[: self.part_bytes])  # the one copy
            del self._buffer[: self.part_bytes]
            unhashed = max(0, len(part) - hashed)
            self._unhashed -= unhashed
            number, self.next_number = self.next_number, self.next_number + 1
            self._in_flight = asyncio.ensure_future(self._hash_and_upload(number, part, unhashed))

    async def _hash_and_upload(self, number: int, part: bytes, unhashed: int) -> None:
        if unhashed:
            await asyncio.to_thread(_update, self.hashes, part[len(part) - unhashed :])
        self.etags.append((number, await self._upload(number, part)))

    async def wait(self) -> None:
        """The part in flight, uploaded (its error raised here)."""
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            await in_flight

    async def hash_rest(self) -> None:
        """Everything appended so far has passed through the hashes."""
        await self.wait()
        if self._unhashed:
            with memoryview(self._buffer) as view:
                rest = bytes(view[len(view) - self._unhashed :])
            self._unhashed = 0
            await asyncio.to_thread(_update, self.hashes, rest)

    def take_rest(self) -> bytes:
        """The bytes short of a whole part (hash_rest first)."""
        rest = bytes(self._buffer)
        self._buffer = bytearray()
        return rest

    async def settle(self) -> None:
        """Let the part in flight end; its error no longer matters."""
        self._buffer = bytearray()
        self._unhashed = 0
        with contextlib.suppress(Exception):
            await self.wait()
