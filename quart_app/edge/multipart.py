"""Streaming multipart/form-data into blob writers (python-multipart).

Werkzeug's decoder can leave a stray CR on the last part when a network
chunk ends inside the closing boundary (pallets/werkzeug#3285) and
``request.files`` spools and copies; python-multipart is a push parser that
is exact whatever the chunking and cheap per byte (README, "Why the code is
shaped this way"), so bytes go from the socket to the blob writer with no
spooling.

Nothing here knows about HTTP: errors are domain errors, and on any failure
every writer this module opened is discarded before the error propagates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser

from quart_app.edge.disposition import clean_filename, header_text, parse_disposition
from quart_app.errors import InvalidInput, MalformedBody, TooLarge, TooManyParts
from quart_app.services.incoming import IncomingFile
from quart_app.storage import BlobTooLarge, BlobWriter

MAX_PART_HEADER_BYTES = 8 * 1024
MAX_PART_HEADERS = 16
FILE_FIELD = "file"


@dataclass(frozen=True)
class MultipartLimits:
    max_file_bytes: int
    max_file_parts: int
    max_fields: int
    max_field_bytes: int
    max_filename_chars: int


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    file: IncomingFile | None = None
    field_name: str | None = None
    value: bytearray = field(default_factory=bytearray)


@dataclass
class MultipartUpload:
    files: list[IncomingFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    async def discard(self) -> None:
        for incoming in self.files:
            await incoming.writer.discard()


def upload_content_type(raw: str | None, fallback: str = "application/octet-stream") -> str:
    """A stored content type: ``type/subtype`` lowercased, plus charset for
    text; anything unparsable becomes the fallback. Media types are
    case-insensitive (RFC 9110 §8.3.1): ``TEXT/HTML`` is ``text/html``, and
    is then treated as HTML everywhere (Content-Disposition, sniffing)."""
    if not raw:
        return fallback
    from werkzeug.http import parse_options_header

    mimetype, params = parse_options_header(raw)
    mimetype = mimetype.lower()
    kind, _, subtype = mimetype.partition("/")
    token = set("abcdefghijklmnopqrstuvwxyz0123456789!#$&^_.+-")
    if not kind or not subtype or not set(mimetype) - {"/"} <= token:
        return fallback
    charset = params.get("charset", "")
    if kind == "text" and charset and set(charset.lower()) <= token:
        return f"{mimetype}; charset={charset.lower()}"[:255]
    return mimetype[:255]


class _Reader:
    """Turns parser callbacks into work on the current part."""

    def __init__(self, limits: MultipartLimits, new_writer: Callable[[int], BlobWriter]) -> None:
        self.limits = limits
        self.new_writer = new_writer
        self.result = MultipartUpload()
        self.events: list[tuple[str, bytes]] = []
        self.chunk: bytes | None = None  # the chunk the parser is reading
        self.part: _Part | None = None
        self.header_name = bytearray()
        self.header_value = bytearray()
        self.header_bytes = 0
        self.ended = False

    def callbacks(self) -> dict[str, Callable[..., None]]:
        def data_event(kind: str) -> Callable[[bytes, int, int], None]:
            return lambda data, start, end: self.events.append((kind, data[start:end]))

        def part_data(data: bytes, start: int, end: int) -> None:
            # File bytes taken from the chunk we gave the parser are passed on
            # as a view (no copy; nothing changes that chunk). Anything else
            # (the parser's own look-behind buffer, which it reuses) is copied.
            if data is self.chunk:
                self.events.append(("data", cast(bytes, memoryview(data)[start:end])))
            else:
                self.events.append(("data", data[start:end]))

        def bare_event(kind: str) -> Callable[[], None]:
            return lambda: self.events.append((kind, b""))

        return {
            "on_part_begin": bare_event("part_begin"),
            "on_header_field": data_event("header_field"),
            "on_header_value": data_event("header_value"),
            "on_header_end": bare_event("header_end"),
            "on_headers_finished": bare_event("headers_finished"),
            "on_part_data": part_data,
            "on_part_end": bare_event("part_end"),
            "on_end": bare_event("end"),
        }

    async def handle(self, kind: str, data: bytes) -> None:
        if kind == "data":
            await self._data(data)
        elif kind == "part_begin":
            self.part = _Part()
            self.header_bytes = 0
        elif kind == "header_field":
            self._count_header(data)
            self.header_name += data
        elif kind == "header_value":
            self._count_header(data)
            self.header_value += data
        elif kind == "header_end":
            assert self.part is not None
            name = self.header_name.decode("latin-1").strip().lower()
            self.part.headers[name] = header_text(bytes(self.header_value)).strip()
            self.header_name.clear()
            self.header_value.clear()
        elif kind == "headers_finished":
            self._start_part()
        elif kind == "part_end":
            await self._end_part()
        elif kind == "end":
            self.ended = True

    def _count_header(self, data: bytes) -> None:
        self.header_bytes += len(data)
        if self.header_bytes > MAX_PART_HEADER_BYTES:
            raise MalformedBody(f"A part's headers exceed {MAX_PART_HEADER_BYTES} bytes.")

    def _start_part(self) -> None:
        part = self.part
        assert part is not None
        disposition = part.headers.get("content-disposition")
        if disposition is None:
            raise MalformedBody("A part has no Content-Disposition header.")
        kind, params = parse_disposition(disposition)
        name = params.get("name")
        if kind != "form-data" or name is None:
            raise MalformedBody("A part's Content-Disposition is not form-data with a name.")
        content_type = part.headers.get("content-type", "")
        if content_type.lower().startswith("multipart/"):
            raise MalformedBody("Nested multipart parts are not accepted.")
        if name == FILE_FIELD and "filename" in params:
            if len(self.result.files) >= self.limits.max_file_parts:
                raise TooManyParts(
                    f"At most {self.limits.max_file_parts} file parts are accepted per request."
                )
            part.file = IncomingFile(
                filename=clean_filename(params["filename"], self.limits.max_filename_chars),
                content_type=upload_content_type(content_type),
                writer=self.new_writer(self.limits.max_file_bytes),
            )
            self.result.files.append(part.file)
        else:
            if len(self.result.fields) >= self.limits.max_fields:
                raise TooManyParts(
                    f"At most {self.limits.max_fields} form fields are accepted per request."
                )
            part.field_name = name

    async def _data(self, data: bytes) -> None:
        part = self.part
        assert part is not None
        if part.file is not None:
            try:
                await part.file.writer.write(data)
            except BlobTooLarge as error:
                raise TooLarge(f"A file is larger than the limit of {error.limit} bytes.") from None
            return
        part.value += data
        if len(part.value) > self.limits.max_field_bytes:
            raise TooLarge(
                f"The form field {part.field_name!r} is larger than "
                f"{self.limits.max_field_bytes} bytes."
            )

    async def _end_part(self) -> None:
        part = self.part
        assert part is not None
        if part.file is not None:
            part.file.sealed = await part.file.writer.seal()
        elif part.field_name is not None:
            try:
                self.result.fields[part.field_name] = part.value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"The form field {part.field_name!r} is not UTF-8.",
                    errors=[{"field": part.field_name, "message": "must be UTF-8 text"}],
                ) from None
        self.part = None


# RFC 2046 section 5.1.1: 1 to 70 of these, not ending in a space.
_BOUNDARY_CHARS = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
)


def check_boundary(boundary: str) -> None:
    if not 1 <= len(boundary) <= 70 or boundary.endswith(" "):
        raise MalformedBody("The multipart boundary must be 1 to 70 characters (RFC 2046).")
    if not set(boundary) <= _BOUNDARY_CHARS:
        raise MalformedBody("The multipart boundary has characters RFC 2046 does not allow.")


async def read_multipart(
    chunks: AsyncIterator[bytes],
    boundary: str,
    limits: MultipartLimits,
    new_writer: Callable[[int], BlobWriter],
) -> MultipartUpload:
    """Parse a multipart body into sealed (durable, unpublished) blobs."""
    check_boundary(boundary)
    reader = _Reader(limits, new_writer)
    try:
        try:
            parser = MultipartParser(
                boundary.encode("latin-1"),
                reader.callbacks(),  # type: ignore[arg-type]
                max_header_count=MAX_PART_HEADERS,
                max_header_size=MAX_PART_HEADER_BYTES,
            )
        except (FormParserError, UnicodeEncodeError) as error:
            raise MalformedBody(f"The multipart boundary is not usable: {error}") from None
        async for chunk in chunks:
            if reader.ended:
                continue  # the epilogue: RFC 2046 section 5.1.1 says to ignore it
            try:
                reader.chunk = chunk
                parser.write(chunk)
            except FormParserError as error:
                raise MalformedBody(f"The multipart body is malformed: {error}") from None
            for kind, data in reader.events:
                await reader.handle(kind, data)
            reader.events.clear()
        if not reader.ended:
            raise MalformedBody("The multipart body ends before its closing boundary.")
    except BaseException:
        # Every file part, the one in progress included, is in result.files.
        await reader.result.discard()
        raise
    return reader.result
