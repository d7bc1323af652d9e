"""The HTTP edge of an upload: from the request's headers and streamed body
to sealed (fsynced, unpublished) incoming files. On any failure, including
cancellation by a client's disconnect, every temp file is removed and the
room reserved in the owner's quota is given back.

The quota (services/quotas.py) is reserved once the headers are known to be
usable and before any byte of the body is read: a raw body's Content-Length
whole; a multipart body's Content-Length, refused at once only when even
less the framing allowance (MAX_MULTIPART_OVERHEAD_BYTES) it does not fit;
a chunked body's room as it streams in."""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from quart import request
from werkzeug.http import parse_options_header

from quart_app.edge.disposition import clean_filename, header_text, parse_disposition
from quart_app.edge.idempotency import observe_body
from quart_app.edge.multipart import (
    MultipartLimits,
    check_boundary,
    read_multipart,
    upload_content_type,
)
from quart_app.errors import InvalidInput, MalformedBody, TooLarge, UnsupportedMediaType
from quart_app.services.incoming import IncomingFile, abandon
from quart_app.services.quotas import QuotaWriter, Reservation, Usage
from quart_app.state import app_state
from quart_app.storage import BlobTooLarge, BlobWriter

T = TypeVar("T")

# Types curl and forms put on a raw body by default: they say nothing of the file.
_NOT_THE_FILES_TYPE = {"", "application/x-www-form-urlencoded"}


async def request_chunks() -> AsyncIterator[bytes]:
    """The request body as it arrives (through bodies.BoundedBody), each
    chunk also fed to the Idempotency-Key fingerprint."""
    async for chunk in request.body:
        observe_body(chunk)
        yield chunk


WriterWrap = Callable[[BlobWriter], BlobWriter]


async def receive_upload(
    owner_id: int,
    wrap: WriterWrap | None = None,
    max_parts: int = 0,
    default_filename: str | None = None,
) -> list[IncomingFile]:
    """multipart/form-data -> every ``file`` part; any other type -> the raw
    body as one file named by Content-Disposition (or ``default_filename``).
    Each holds room in ``owner_id``'s quota. ``wrap`` wraps each writer
    (archives are recognised as they stream); ``max_parts`` (0:
    MAX_FILE_PARTS) bounds the file parts."""
    mimetype, params = parse_options_header(request.headers.get("Content-Type", ""))
    mimetype = mimetype.lower()  # case-insensitive (RFC 9110 §8.3.1); the boundary is not
    if mimetype == "multipart/form-data":
        return await _receive_multipart(params.get("boundary"), owner_id, wrap, max_parts)
    if mimetype.startswith("multipart/"):
        raise UnsupportedMediaType(
            f"{mimetype} is not accepted: send multipart/form-data or the raw bytes."
        )
    reservation = app_state().quotas.reservation(owner_id)
    return [await receive_raw(default_filename, reservation, wrap=wrap)]


async def _receive_multipart(
    boundary: str | None, owner_id: int, wrap: WriterWrap | None, max_parts: int
) -> list[IncomingFile]:
    if not boundary:
        raise MalformedBody("multipart/form-data needs a boundary parameter.")
    check_boundary(boundary)
    config = app_state().settings
    limits = MultipartLimits(
        max_file_bytes=config.MAX_UPLOAD_BYTES,
        max_file_parts=max_parts or config.MAX_FILE_PARTS,
        max_fields=config.MAX_FORM_FIELDS,
        max_field_bytes=config.MAX_FORM_FIELD_BYTES,
        max_filename_chars=config.MAX_FILENAME_CHARS,
    )
    reservation = app_state().quotas.reservation(owner_id)
    store = app_state().store
    try:
        await reservation.open(request.content_length, slack=config.MAX_MULTIPART_OVERHEAD_BYTES)
        upload = await read_multipart(
            request_chunks(),
            boundary,
            limits,
            lambda max_bytes: _wrapped(QuotaWriter(store.writer(max_bytes), reservation), wrap),
        )
    except BaseException:
        await _give_back(reservation)
        raise
    for item in upload.files:
        item.reservation = reservation
    if not upload.files:
        await _give_back(reservation)
        raise InvalidInput(
            "The form has no file: send a part named 'file' with a filename.",
            errors=[{"field": "file", "message": "required"}],
        )
    return upload.files


def _wrapped(writer: BlobWriter, wrap: WriterWrap | None) -> BlobWriter:
    return writer if wrap is None else wrap(writer)


async def _give_back(reservation: Reservation) -> None:
    # Runs to its end even when the request is being cancelled.
    await app_state().database.commits.run_to_completion(reservation.cancel())


def raw_filename(default: str | None) -> str:
    header = request.headers.get("Content-Disposition")
    name = None
    if header is not None:
        kind, params = parse_disposition(header_text(header.encode("latin-1")))
        if kind not in ("attachment", "inline", "form-data"):
            raise InvalidInput(
                "Content-Disposition must be attachment with a filename.",
                errors=[{"field": "Content-Disposition", "message": "unknown disposition"}],
            )
        name = params.get("filename")
    if name is None:
        name = default
    if name is None:
        raise InvalidInput(
            'Name the file: Content-Disposition: attachment; filename="..."',
            errors=[{"field": "Content-Disposition", "message": "a filename is required"}],
        )
    return clean_filename(name, app_state().settings.MAX_FILENAME_CHARS)


def raw_content_type(filename: str) -> str:
    given = request.headers.get("Content-Type", "")
    if parse_options_header(given)[0].lower() in _NOT_THE_FILES_TYPE:
        guessed, _ = mimetypes.guess_type(filename, strict=False)
        return upload_content_type(guessed)
    return upload_content_type(given)


async def receive_raw(
    default_filename: str | None,
    reservation: Reservation,
    credit: Usage | None = None,
    wrap: WriterWrap | None = None,
) -> IncomingFile:
    """The raw body as one file, holding room in ``reservation`` (``credit``:
    what storing it frees, a PUT's file it replaces; ``wrap``: see
    receive_upload)."""
    filename = raw_filename(default_filename)
    content_type = raw_content_type(filename)
    try:
        await reservation.open(request.content_length, credit=credit)
    except BaseException:
        await _give_back(reservation)
        raise
    blob_writer = app_state().store.writer(app_state().settings.MAX_UPLOAD_BYTES)
    writer = _wrapped(QuotaWriter(blob_writer, reservation), wrap)
    incoming = IncomingFile(filename, content_type, writer, reservation=reservation)
    try:
        async for chunk in request_chunks():
            await writer.write(chunk)
        incoming.sealed = await writer.seal()
    except BlobTooLarge as error:
        await writer.discard()
        await _give_back(reservation)
        raise TooLarge(f"The file is larger than the limit of {error.limit} bytes.") from None
    except BaseException:
        await writer.discard()
        await _give_back(reservation)
        raise
    return incoming


async def discard(incoming: list[IncomingFile]) -> None:
    await abandon(incoming)


async def commit_or_discard(incoming: list[IncomingFile], work: Coroutine[Any, Any, T]) -> T:
    """Run the transaction that stores ``incoming`` to its end, even if the
    client hangs up (CommitsInFlight.run_to_completion). Its temp files belong to
    it: removed when it fails, never by the request while it runs."""

    async def owned() -> T:
        try:
            return await work
        except BaseException:
            await discard(incoming)
            raise

    return await app_state().database.commits.run_to_completion(owned())
