"""The one place a blob store is built from the settings."""

from __future__ import annotations

from quart_app.config import Settings
from quart_app.storage.local import LocalBlobStore


def build_store(settings: Settings) -> LocalBlobStore:
    """The configured store, its layout prepared (for operator commands
    that run without a server)."""
    store = LocalBlobStore(
        settings.STORAGE_DIR, settings.WRITE_BATCH_BYTES, settings.INLINE_BLOB_BYTES
    )
    store.prepare()
    return store
