"""Client filenames: what is stored, and the plain ``filename=`` fallback a
download gives clients that do not read ``filename*``."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote

import pytest

from quart_app.edge.disposition import clean_filename, download_disposition
from quart_app.edge.multipart import upload_content_type

HOSTILE_NAMES = [
    "\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fetc\uff0fpasswd",  # fullwidth ../../etc/passwd
    "\uff0e\uff0e\uff3cwindows\uff3csystem32",  # fullwidth ..\windows\system32
    "\ufe68\ufe68server\ufe68share.txt",  # small reverse solidus
    "\u2025\uff0fup.txt",  # two dot leader: ".." under NFKD
    "\u2026\uff0fup.txt",  # ellipsis: "..."
    "\ufe30\ufe68up.txt",  # vertical two dot leader
    "C:evil.exe",  # drive-relative, no separator to strip
    "\uff23\uff1a\uff3cevil.exe",  # fullwidth C:\
    "c\ufe55boot.ini",  # small colon
    "d\ufe13x.txt",  # vertical colon
    "..",
    "...",
    ". .",
    "a..b.txt",
    ".. .. ..",
    "a\u200db.txt",  # zero-width joiner
    "\u200b\u200bhidden.txt",  # zero-width spaces
    "\ufeffbom.txt",
    "word\u2060joiner.txt",
    "evil\u202egnp.exe",  # right-to-left override
    "\u2066isolated\u2069.pdf",
    "\u200e\u200f\u061cmarks.txt",
    "soft\u00adhyphen.txt",
    "tag\U000e0041\U000e007f.txt",  # Unicode tag characters
    "e\u0301\u0301\u0301\u0338zalgo.txt",  # stacked combining marks
    "\u2260not-equal.txt",  # NFKD leaves a combining overlay
    "na\u00efve r\u00e9sum\u00e9.pdf",
    "%2e%2e%2fpercent.txt",
    '"quoted\\".txt',
    "\x1b[31mred.txt",
    "\u65e5\u672c\u8a9e.txt",  # nothing ASCII but the extension
    "\u65e5\u672c",  # nothing ASCII at all
]


def fallback(header: str) -> str:
    match = re.search(r'; filename="([^"]*)";', header)
    assert match is not None, header
    return match.group(1)


def invisible(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf")


@pytest.mark.parametrize("raw", HOSTILE_NAMES)
def test_the_fallback_is_a_plain_name_whatever_the_name(raw: str) -> None:
    """Checked on the raw name too: rows stored before a cleaning rule
    changed reach downloads as they were stored."""
    for name in (raw, clean_or_none(raw)):
        if name is None:
            continue
        plain = fallback(download_disposition(name, "application/octet-stream"))
        assert plain and plain.isascii() and plain.isprintable(), plain
        assert "/" not in plain and "\\" not in plain, plain
        assert ".." not in plain and ":" not in plain, plain
        assert '"' not in plain and "%" not in plain, plain
        assert not any(invisible(ch) for ch in plain), plain
        assert plain.strip(" .") == plain, plain


def clean_or_none(raw: str) -> str | None:
    try:
        return clean_filename(raw, 255)
    except Exception:
        return None


@pytest.mark.parametrize("raw", HOSTILE_NAMES)
def test_stored_names_have_no_invisible_characters(raw: str) -> None:
    name = clean_or_none(raw)
    if name is None:
        return  # refused (nothing left once cleaned): a 400
    assert not any(invisible(ch) for ch in name), ascii(name)
    assert unicodedata.is_normalized("NFC", name)
    header = download_disposition(name, "text/plain")
    assert unquote(header.split("filename*=UTF-8''", 1)[1]) == name


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("a\u200db.txt", "ab.txt"),
        ("\u200b\u200bhidden.txt", "hidden.txt"),
        ("\ufeffbom.txt", "bom.txt"),
        ("word\u2060joiner.txt", "wordjoiner.txt"),
        ("evil\u202egnp.exe", "evilgnp.exe"),
        ("soft\u00adhyphen.txt", "softhyphen.txt"),
        ("e\u200b\u0301.txt", "\u00e9.txt"),  # composed once the space is gone
        ("\u65e5\u672c\u8a9e.txt", "\u65e5\u672c\u8a9e.txt"),
    ],
)
def test_invisible_characters_are_removed(raw: str, stored: str) -> None:
    assert clean_filename(raw, 255) == stored


@pytest.mark.parametrize(
    ("name", "plain"),
    [
        ("report.pdf", "report.pdf"),
        ("na\u00efve r\u00e9sum\u00e9.pdf", "naive resume.pdf"),
        ("\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fetc\uff0fpasswd", "_._etc_passwd"),
        ("C:evil.exe", "C_evil.exe"),
        ("a..b.txt", "a.b.txt"),
        ("\u65e5\u672c", "download"),
        ("...", "download"),
    ],
)
def test_the_fallback_keeps_what_it_can(name: str, plain: str) -> None:
    assert fallback(download_disposition(name, "text/plain")) == plain


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("TEXT/HTML", "text/html"),
        ("Image/PNG", "image/png"),
        ("Text/Plain; Charset=UTF-8", "text/plain; charset=utf-8"),
        ("APPLICATION/PDF; q=1", "application/pdf"),
        ("text/html", "text/html"),
        ("not a type", "application/octet-stream"),
        (None, "application/octet-stream"),
    ],
)
def test_media_types_are_matched_whatever_their_case_and_stored_lowercase(
    given: str | None, stored: str
) -> None:
    assert upload_content_type(given) == stored
