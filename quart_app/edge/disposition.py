"""Content-Disposition (RFC 6266, RFC 8187 ext-values) and client filenames.

Clients name files in a multipart part's Content-Disposition or in a raw
upload's ``Content-Disposition: attachment; filename=...``. ``filename*``
wins over ``filename`` wherever both are given, in either order. A client's
filename is metadata only: it is cleaned here and never becomes a path.
"""

from __future__ import annotations

import re
import string
import unicodedata
from urllib.parse import quote, unquote_to_bytes

from quart_app.errors import InvalidInput

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED_STRING = r'"(?:[^"\\]|\\.)*"'
_QUOTED = re.compile(_QUOTED_STRING, re.DOTALL)
_PARAM = re.compile(rf"\s*;\s*({_TOKEN})\s*=\s*({_QUOTED_STRING}|[^;]*)", re.DOTALL)
_TYPE = re.compile(rf"\s*({_TOKEN})")
# Control characters, and format characters: invisible, they make a name
# read as another (zero-width spaces and joiners, byte order marks, soft
# hyphens, tag characters, and the bidi overrides that turn "gnp.exe" round).
_INVISIBLE = {"Cc", "Cf"}
# What the plain ``filename=`` may hold: ASCII no filesystem or shell treats
# specially. Separators, ':' (a drive, a stream), quotes, '%' (some clients
# percent-decode the fallback), ';' and ',' (naive parsers split on them) and
# anything else become "_".
_FALLBACK_CHARACTERS = frozenset(string.ascii_letters + string.digits + " !#$&'()+-.=@[]^_{}~")
# Dropped from the fallback rather than replaced: accents NFKD split off
# their letters, and what is invisible anyway.
_FALLBACK_DROPPED = {"Mn", "Me", "Cc", "Cf"}
# Types a browser may show in place: they cannot run script in our origin.
INLINE_TYPES = frozenset(
    {
        "image/png", "image/jpeg", "image/gif", "image/webp", "image/avif",
        "text/plain", "application/pdf",
        "audio/mpeg", "audio/ogg", "audio/wav", "audio/webm",
        "video/mp4", "video/webm", "video/ogg",
    }
)  # fmt: skip


def header_text(raw: bytes) -> str:
    """Header bytes as text: UTF-8 (what browsers and curl send), else latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _decode_ext_value(value: str) -> str | None:
    """RFC 8187 ``charset'language'pct-encoded``; None when unusable."""
    parts = value.strip().split("'", 2)
    if len(parts) != 3:
        return None
    charset = parts[0].lower()
    if charset not in ("utf-8", "iso-8859-1"):
        return None
    try:
        return unquote_to_bytes(parts[2]).decode(charset)
    except UnicodeDecodeError:
        return None


def parse_disposition(value: str) -> tuple[str, dict[str, str]]:
    """The disposition type (lowercase) and its parameters (names lowercase),
    with ``filename`` holding the name to use: from ``filename*`` if usable."""
    match = _TYPE.match(value)
    if match is None:
        return "", {}
    kind = match.group(1).lower()
    params: dict[str, str] = {}
    extended: dict[str, str] = {}
    for name, raw in _PARAM.findall(value, match.end()):
        name = name.lower()
        if name.endswith("*"):
            decoded = _decode_ext_value(raw)
            if decoded is not None:
                extended[name[:-1]] = decoded
        else:
            if '"' in raw and not _QUOTED.fullmatch(raw.strip()):
                raise InvalidInput(
                    f"The Content-Disposition parameter {name!r} has an unclosed quote.",
                    errors=[{"field": "Content-Disposition", "message": "malformed parameter"}],
                )
            params.setdefault(name, _unquote(raw))
    params.update(extended)
    return kind, params


def clean_filename(raw: str, max_chars: int) -> str:
    """NFC, no control or format (invisible) characters, no directories, bounded.

    A line break is refused rather than removed: no client puts one in a
    name (browsers send it percent-encoded); it is a header-injection attempt.
    """
    if "\r" in raw or "\n" in raw:
        raise InvalidInput(
            "The filename contains a line break.",
            errors=[{"field": "filename", "message": "must not contain CR or LF"}],
        )
    visible = "".join(ch for ch in raw if unicodedata.category(ch) not in _INVISIBLE)
    # Normalised after the removal: a removed character may have kept a
    # letter from its combining mark.
    name = unicodedata.normalize("NFC", visible)
    # Some clients send a whole path (C:\Users\...\a.txt); keep the last part.
    name = re.split(r"[/\\]", name)[-1].strip()
    if name in ("", ".", ".."):
        raise InvalidInput(
            "The filename is empty once directories and control characters are removed.",
            errors=[{"field": "filename", "message": "must name a file"}],
        )
    if len(name) > max_chars:
        raise InvalidInput(
            f"The filename is longer than {max_chars} characters.",
            errors=[{"field": "filename", "message": f"at most {max_chars} characters"}],
        )
    return name


def _ascii_fallback(filename: str) -> str:
    """A plain name for clients that ignore ``filename*``: never a path, a
    drive, ``..`` or an invisible character, whatever the name folds to.
    NFKD makes ASCII of fullwidth and compatibility forms (U+FF0E U+FF0E
    U+FF0F is ``../``, U+2025 is ``..``), so the checks run on what it
    produced."""
    folded = "".join(
        ch
        for ch in unicodedata.normalize("NFKD", filename)
        if unicodedata.category(ch) not in _FALLBACK_DROPPED
    )
    safe = "".join(ch if ch in _FALLBACK_CHARACTERS else "_" for ch in folded)
    safe = re.sub(r"_{2,}", "_", re.sub(r"\.{2,}", ".", safe)).strip(" .")
    return safe if any(ch.isalnum() for ch in safe) else "download"


def download_disposition(filename: str, content_type: str) -> str:
    """``inline`` only for INLINE_TYPES, ``attachment`` for all else, with an
    ASCII ``filename`` and the exact name in ``filename*=UTF-8''...``."""
    mimetype = content_type.split(";", 1)[0].strip().lower()
    kind = "inline" if mimetype in INLINE_TYPES else "attachment"
    encoded = quote(filename, safe="!#$&+-.^_`|~")
    return f"{kind}; filename=\"{_ascii_fallback(filename)}\"; filename*=UTF-8''{encoded}"
