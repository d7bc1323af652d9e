"""An upload as it arrives: the client's name and type for it, the writer
its bytes stream into, and the sealed blob once they are all durable."""

from __future__ import annotations

from dataclasses import dataclass

from quart_app.storage import BlobWriter, SealedBlob


@dataclass
class IncomingFile:
    filename: str
    content_type: str
    writer: BlobWriter
    sealed: SealedBlob | None = None
    owner_id: int = 0  # the account it will belong to (set before it is stored)
