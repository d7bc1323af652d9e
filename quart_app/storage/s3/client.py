"""The S3 client (aioboto3) and what the backend needs around it: where keys
live in the bucket, and which S3 errors mean what.

Endpoint, region and credentials come from the standard AWS variables
(``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), read by the factory and
passed here; where a variable is unset, botocore's own chain decides (an
instance role, ~/.aws/config).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from quart_app.storage import StorageUnwritable

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

# Connections per worker to the store: the uploads and downloads in flight
# at once (each holds one while a part or a range moves).
MAX_POOL_CONNECTIONS = 64
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 120.0

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


@asynccontextmanager
async def s3_client(
    endpoint: str | None,
    region: str | None,
    access_key: str | None,
    secret_key: str | None,
    session_token: str | None = None,
) -> AsyncIterator[S3Client]:
    session = aioboto3.Session()
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
    async with session.client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=region or None,
        aws_access_key_id=access_key or None,
        aws_secret_access_key=secret_key or None,
        aws_session_token=session_token or None,
        config=config,
    ) as client:
        yield client


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
