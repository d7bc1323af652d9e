"""An upload as it arrives: the client's name and type for it, the writer
its bytes stream into, and the sealed blob once they are all durable."""

from __future__ import annotations

from dataclasses import dataclass

from quart_app.services.quotas import Reservation
from quart_app.storage import BlobWriter, SealedBlob


@dataclass
class IncomingFile:
    filename: str
    content_type: str
    writer: BlobWriter
    sealed: SealedBlob | None = None
    owner_id: int = 0  # the account it will belong to (set before it is stored)
    # The room it holds in its owner's quota, released by the transaction
    # that stores it (several files of one request share one).
    reservation: Reservation | None = None


def reservations_of(incoming: list[IncomingFile]) -> list[Reservation]:
    """Each reservation the files hold, once."""
    found: dict[int, Reservation] = {}
    for item in incoming:
        if item.reservation is not None:
            found.setdefault(id(item.reservation), item.reservation)
    return list(found.values())


async def abandon(incoming: list[IncomingFile]) -> None:
    """The files will not be stored: remove their temp files and give back
    the room they held."""
    for item in incoming:
        await item.writer.discard()
    for reservation in reservations_of(incoming):
        await reservation.cancel()
