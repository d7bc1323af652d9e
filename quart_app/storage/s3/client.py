"""The S3 client (aiobotocore's, which aioboto3 brings and pins) and what
the backend needs around it: where keys live in the bucket, and which S3
errors mean what.

Endpoint, region and credentials come from the standard AWS variables
(``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), read by the factory and
passed here; where a variable is unset, botocore's own chain decides (an
instance role, ~/.aws/config).
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import aiohttp.payload
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from aiohttp.abc import AbstractStreamWriter
from botocore.exceptions import BotoCoreError, ClientError
from botocore.loaders import Loader

from quart_app.storage import StorageUnwritable

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

# Connections per worker to the store: the uploads and downloads in flight
# at once (each holds one while a part or a range moves).
MAX_POOL_CONNECTIONS = 64
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 120.0
# A part goes to the socket in slices of this size (WholeBodyPayload).
WRITE_SLICE_BYTES = 1024 * 1024

_MISSING = {"NoSuchKey", "NotFound", "404", "NoSuchUpload"}
_EXISTS = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


@dataclass(frozen=True)
class S3Location:
    """A bucket and the key prefix under which everything of this app lives."""

    bucket: str
    prefix: str

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def relative(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


# botocore's service descriptions (endpoints, the S3 model and its rules,
# about a megabyte of JSON), read by the first session and shared by every
# later one: a process that opens more than one store (a test run opens
# hundreds) read them again for each, 0.1-0.2 s of CPU. Only that read-only
# data is shared; each session keeps its own credentials and settings.
_loader: Loader | None = None


def _session() -> AioSession:
    global _loader
    session = AioSession()
    if _loader is None:
        _loader = session.get_component("data_loader")
    else:
        session.register_component("data_loader", _loader)
    return session


@asynccontextmanager
async def s3_client(
    endpoint: str | None,
    region: str | None,
    access_key: str | None,
    secret_key: str | None,
    session_token: str | None = None,
) -> AsyncIterator[S3Client]:
    session = _session()
    config = AioConfig(
        max_pool_connections=MAX_POOL_CONNECTIONS,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        retries={"mode": "standard", "max_attempts": 3},
        # Path-style: what S3-compatible stores (SeaweedFS, MinIO) expect.
        s3={"addressing_style": "path"},
        # Checksums only where S3 requires them: S3-compatible stores differ
        # in which trailing checksums they accept.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    async with session.create_client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=region or None,
        aws_access_key_id=access_key or None,
        aws_secret_access_key=secret_key or None,
        aws_session_token=session_token or None,
        config=config,
    ) as client:
        client.meta.events.register("before-send.s3", _send_bytes_whole)
        yield client


def _send_bytes_whole(request: Any, **_: Any) -> None:
    """Hand a part to aiohttp as the bytes it is. botocore wraps a bytes body
    in a BytesIO, which aiohttp then reads 64 KiB at a time through a thread
    executor (256 thread hops per 16 MiB part); and it asks for
    ``Expect: 100-continue``, a round trip before every part. Measured on
    1 GiB to SeaweedFS: bench/S3_LIBRARIES.md."""
    body = request.body
    if isinstance(body, io.BytesIO) and body.tell() == 0:
        # An unmodified BytesIO made from bytes shares them: no copy.
        request.body = WholeBody(body.getvalue())
    request.headers.pop("Expect", None)


class WholeBody:
    """Bytes aiohttp writes to the socket in one call (WholeBodyPayload).
    botocore rewinds a body before it retries a request: nothing to rewind."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0


class WholeBodyPayload(aiohttp.payload.BytesPayload):
    """A part written in slices of WRITE_SLICE_BYTES, each a view of it (no
    copy), aiohttp draining the socket between them: no thread hop, and the
    transport never holds more than a slice (written whole, it would keep a
    copy of what the socket did not take at once: one more part of memory).
    Without aiohttp's warning for bytes bodies over 1 MiB ("might lock the
    event loop"), which this answers."""

    def __init__(self, value: WholeBody, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("content_type", "application/octet-stream")
        aiohttp.payload.Payload.__init__(self, value.data, *args, **kwargs)
        self._size = len(value.data)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        view = memoryview(self._value)
        if content_length is not None:
            view = view[:content_length]
        for start in range(0, len(view), WRITE_SLICE_BYTES):
            await writer.write(view[start : start + WRITE_SLICE_BYTES])


aiohttp.payload.PAYLOAD_REGISTRY.register(
    WholeBodyPayload, WholeBody, order=aiohttp.payload.Order.try_first
)


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def is_missing(error: BaseException) -> bool:
    return isinstance(error, ClientError) and error_code(error) in _MISSING


def is_exists(error: BaseException) -> bool:
    """A conditional write (If-None-Match: *) found the key taken."""
    return isinstance(error, ClientError) and error_code(error) in _EXISTS


def unwritable(error: BaseException) -> StorageUnwritable:
    """The store refused or could not be reached: nothing is wrong with the
    request (503, not 500). One line naming the cause, no secrets."""
    if isinstance(error, ClientError):
        code = error_code(error)
        message = error.response.get("Error", {}).get("Message", "")
        return StorageUnwritable(f"S3 answered {code or 'an error'}: {message}".strip(": "))
    return StorageUnwritable(f"S3 is not reachable: {error}")


S3_ERRORS = (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)
