"""The one place a blob store is built from the settings: the local
directory by default, an S3-compatible object store for ``s3://`` URLs."""

from __future__ import annotations

import os
from collections.abc import Mapping

from quart_app.config import Settings
from quart_app.storage import MaintainedStore


def build_store(settings: Settings, environ: Mapping[str, str] | None = None) -> MaintainedStore:
    """The configured store, its layout prepared (for operator commands
    that run without a server)."""
    if settings.STORAGE_URL:
        return build_s3_store(settings, os.environ if environ is None else environ)
    from quart_app.storage.local import LocalBlobStore

    store = LocalBlobStore(
        settings.STORAGE_DIR, settings.WRITE_BATCH_BYTES, settings.INLINE_BLOB_BYTES
    )
    store.prepare()
    return store


def build_s3_store(settings: Settings, environ: Mapping[str, str]) -> MaintainedStore:
    """Endpoint, region and credentials from the standard AWS variables."""
    from quart_app.storage.s3.client import S3Location
    from quart_app.storage.s3.store import S3BlobStore, S3Credentials

    bucket, _, prefix = settings.STORAGE_URL.partition("://")[2].partition("/")
    credentials = S3Credentials(
        endpoint=environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL"),
        region=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION"),
        access_key=environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=environ.get("AWS_SECRET_ACCESS_KEY"),
        session_token=environ.get("AWS_SESSION_TOKEN"),
    )
    return S3BlobStore(
        S3Location(bucket, prefix.strip("/")),
        credentials,
        settings.S3_PART_BYTES,
        settings.INLINE_BLOB_BYTES,
    )
