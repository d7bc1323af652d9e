"""The local-disk backend: writers (writers.py), the store and its layout
(store.py), crash recovery of that layout (recovery.py)."""

from quart_app.storage.local.disk import READ_CHUNK_BYTES
from quart_app.storage.local.store import LocalBlobReader, LocalBlobStore
from quart_app.storage.local.writers import LocalBlobWriter, LocalPartialWriter

__all__ = [
    "READ_CHUNK_BYTES",
    "LocalBlobReader",
    "LocalBlobStore",
    "LocalBlobWriter",
    "LocalPartialWriter",
]
