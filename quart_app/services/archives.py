"""Archives: recognising one from its first bytes, and reading its entries
safely, one at a time, in bounded memory.

Formats: zip, tar, and tar compressed with gzip, bzip2 or xz, recognised
from the bytes whatever the client's Content-Type says (a gzip that does not
hold a tar is not an archive we read).

Reading refuses, naming the entry (:class:`ArchiveRefused`): names that
could escape a directory (absolute, ``..``, drive letters, backslashes),
line breaks in names, symlinks, hard links, devices and FIFOs, encrypted zip
entries, more than ``max_entries`` entries, an entry over
``max_entry_bytes``, more than ``max_total_bytes`` in all, output past
``max_ratio`` times the archive's size (once past a 1 MiB floor, so that a
small archive of text is not a bomb), a truncated or corrupt archive (CRC
mismatch included). Directories are skipped (they hold no bytes). Nested
archives are entries like any other: stored, never expanded.

The code here is blocking; the import worker runs it in a thread.
"""

from __future__ import annotations

import bz2
import io
import lzma
import re
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from quart_app.errors import UnsupportedMediaType
from quart_app.storage import BlobWriter, SealedBlob

SNIFF_BYTES = 64 * 1024
TAR_MAGIC_AT = 257
READ_BYTES = 1024 * 1024
RATIO_FLOOR_BYTES = 1024 * 1024
NEED_MORE = "need more"
FORMATS = ("zip", "tar", "tar.gz", "tar.bz2", "tar.xz")


def _is_tar(head: bytes) -> bool | None:
    if len(head) < TAR_MAGIC_AT + 5:
        return None
    return head[TAR_MAGIC_AT : TAR_MAGIC_AT + 5] == b"ustar"


def detect_format(head: bytes, complete: bool) -> str | None:
    """The archive format of bytes starting with ``head``; None if they are
    not one we read; NEED_MORE if more bytes are needed to tell (only when
    not ``complete``)."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    decompressors: dict[str, Any] = {
        "tar.gz": (b"\x1f\x8b", lambda: zlib.decompressobj(wbits=31)),
        "tar.bz2": (b"BZh", bz2.BZ2Decompressor),
        "tar.xz": (b"\xfd7zXZ\x00", lzma.LZMADecompressor),
    }
    for name, (magic, make) in decompressors.items():
        if head.startswith(magic):
            try:
                inner = make().decompress(head)
            except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
                return None
            tar = _is_tar(inner)
            if tar is None:
                return None if complete or len(head) >= SNIFF_BYTES else NEED_MORE
            return name if tar else None
    tar = _is_tar(head)
    if tar is None:
        return None if complete or len(head) >= SNIFF_BYTES else NEED_MORE
    return "tar" if tar else None


def _not_an_archive() -> UnsupportedMediaType:
    return UnsupportedMediaType(
        f"The body is not an archive this server reads ({', '.join(FORMATS)})."
    )


class SniffingWriter:
    """A BlobWriter that tells, from the first bytes written, whether they
    are an archive (``format``); raises UnsupportedMediaType as soon as they
    are not. The caller discards the temp file, as for any failed upload."""

    def __init__(self, inner: BlobWriter) -> None:
        self._inner = inner
        self._head = b""
        self.format: str | None = None

    @property
    def size(self) -> int:
        return self._inner.size

    @size.setter
    def size(self, value: int) -> None:
        self._inner.size = value

    def _decide(self, complete: bool) -> None:
        found = detect_format(self._head, complete)
        if found is None:
            raise _not_an_archive()
        if found != NEED_MORE:
            self.format, self._head = found, b""

    async def write(self, data: bytes) -> None:
        if self.format is None:
            self._head += data[: SNIFF_BYTES - len(self._head)]
            self._decide(complete=False)
        await self._inner.write(data)

    async def seal(self) -> SealedBlob:
        if self.format is None:
            self._decide(complete=True)
        return await self._inner.seal()

    async def publish(self) -> bool:
        return await self._inner.publish()

    async def unpublish(self) -> None:
        await self._inner.unpublish()

    async def settle(self) -> None:
        await self._inner.settle()

    async def discard(self) -> None:
        await self._inner.discard()


class ArchiveRefused(Exception):
    """The archive (or one of its entries) breaks a rule; nothing of it is kept."""

    def __init__(self, reason: str, entry: str | None = None) -> None:
        super().__init__(reason if entry is None else f"{entry!r}: {reason}")
        self.reason = reason
        self.entry = entry


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int
    max_entry_bytes: int
    max_total_bytes: int
    max_ratio: int
    max_name_chars: int


_DRIVE = re.compile(r"^[A-Za-z]:")
_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn"}


def clean_entry_name(raw: str, max_chars: int) -> str:
    """The entry's path inside the archive, as a file's name: NFC, no
    invisible characters; refused when it could name a place outside a
    directory or carries a line break."""
    if "\r" in raw or "\n" in raw:
        raise ArchiveRefused("the name contains a line break", raw)
    if raw.startswith("/") or _DRIVE.match(raw) or "\\" in raw:
        raise ArchiveRefused("the name is absolute or uses backslashes", raw)
    parts = raw.split("/")
    if ".." in parts:
        raise ArchiveRefused("the name climbs out of the archive (..)", raw)
    visible = "".join(ch for ch in raw if unicodedata.category(ch) not in _INVISIBLE)
    name = "/".join(
        p for p in unicodedata.normalize("NFC", visible).split("/") if p not in ("", ".")
    )
    if not name:
        raise ArchiveRefused("the name is empty", raw)
    if len(name) > max_chars:
        raise ArchiveRefused(f"the name is longer than {max_chars} characters", raw)
    return name


def _tar_name(name: str) -> str:
    """tar names carry no encoding: UTF-8 when they decode as such (what
    every current tool writes), else Latin-1, byte for byte."""
    raw = name.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _Counter:
    def __init__(self, limits: ArchiveLimits, archive_size: int) -> None:
        self.limits = limits
        self.archive_size = archive_size
        self.entries = 0
        self.total = 0

    def entry(self, name: str) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise ArchiveRefused(f"the archive has more than {self.limits.max_entries} entries")

    def chunks(self, name: str, stream: IO[bytes]) -> Iterator[bytes]:
        size = 0
        limits = self.limits
        ratio_cap = max(RATIO_FLOOR_BYTES, limits.max_ratio * self.archive_size)
        while True:
            with _as_refusal(name):
                chunk = stream.read(READ_BYTES)
            if not chunk:
                return
            size += len(chunk)
            self.total += len(chunk)
            if size > limits.max_entry_bytes:
                raise ArchiveRefused(
                    f"the entry is larger than {limits.max_entry_bytes} bytes", name
                )
            if self.total > limits.max_total_bytes:
                raise ArchiveRefused(
                    f"the archive holds more than {limits.max_total_bytes} bytes", name
                )
            if self.total > ratio_cap:
                raise ArchiveRefused(
                    f"the archive expands more than {limits.max_ratio} times its size "
                    "(a compression bomb)",
                    name,
                )
            yield chunk


def read_entries(
    source: IO[bytes] | io.RawIOBase, archive_format: str, archive_size: int, limits: ArchiveLimits
) -> Iterator[tuple[str, Iterator[bytes]]]:
    """(name, bytes) for each file entry, in archive order. Each entry's
    bytes must be read to the end before the next is asked for. Raises
    ArchiveRefused."""
    counter = _Counter(limits, archive_size)
    with _as_refusal():
        if archive_format == "zip":
            yield from _zip_entries(source, counter)
        else:
            yield from _tar_entries(source, archive_format, counter)


@contextmanager
def _as_refusal(entry: str | None = None) -> Iterator[None]:
    """What the archive modules raise on bad bytes, as ArchiveRefused."""
    try:
        yield
    except ArchiveRefused:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
        raise ArchiveRefused(f"the archive is truncated or corrupt ({error})", entry) from None
    except (lzma.LZMAError, OSError, ValueError, RuntimeError, NotImplementedError) as error:
        raise ArchiveRefused(f"the archive is truncated or corrupt ({error})", entry) from None


def _zip_entries(source: Any, counter: _Counter) -> Iterator[tuple[str, Iterator[bytes]]]:
    with zipfile.ZipFile(source) as archive:
        infos = archive.infolist()
        if len(infos) > counter.limits.max_entries:
            raise ArchiveRefused(f"the archive has more than {counter.limits.max_entries} entries")
        for info in infos:
            if info.is_dir():
                continue
            name = clean_entry_name(info.filename, counter.limits.max_name_chars)
            # Unix mode bits, when the zip has them: a type other than a
            # regular file (zip tools store symlinks this way).
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind and kind != stat.S_IFREG:
                raise ArchiveRefused("a link or special file, not a regular file", name)
            if info.flag_bits & 0x1:
                raise ArchiveRefused("the entry is encrypted", name)
            if info.file_size > counter.limits.max_entry_bytes:
                raise ArchiveRefused(
                    f"the entry is larger than {counter.limits.max_entry_bytes} bytes", name
                )
            counter.entry(name)
            with archive.open(info) as stream:
                yield name, counter.chunks(name, stream)


def _tar_entries(
    source: Any, archive_format: str, counter: _Counter
) -> Iterator[tuple[str, Iterator[bytes]]]:
    compression = archive_format.partition(".")[2] or ""
    mode = f"r|{compression}"
    with tarfile.open(fileobj=source, mode=mode, encoding="utf-8", errors="surrogateescape") as tar:  # type: ignore[call-overload]
        for member in tar:
            name_raw = _tar_name(member.name)
            if member.isdir():
                continue
            name = clean_entry_name(name_raw, counter.limits.max_name_chars)
            if not member.isfile():
                raise ArchiveRefused("a link, device or FIFO, not a regular file", name)
            if member.size > counter.limits.max_entry_bytes:
                raise ArchiveRefused(
                    f"the entry is larger than {counter.limits.max_entry_bytes} bytes", name
                )
            counter.entry(name)
            stream = tar.extractfile(member)
            if stream is None:
                raise ArchiveRefused("the entry has no bytes to read", name)
            yield name, counter.chunks(name, stream)


class BlockReader(io.RawIOBase):
    """A seekable, read-only file over ``read_at(offset, size)``: what
    zipfile needs, over any blob store."""

    def __init__(self, size: int, read_at: Any) -> None:
        self._size = size
        self._read_at = read_at
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        data: bytes = self._read_at(self._pos, want)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)
