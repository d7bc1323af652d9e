"""The browser assets under ``/static/``: content-hashed names and the
cache headers that go with them.

Every file under quart_app/static/ (its HTML templates excepted) is served
as ``/static/<folder>/<stem>.<hash>.<suffix>``, the hash being the first
HASH_CHARS hex digits of its sha256, computed when the app is built. A
name changes whenever the bytes do, so an asset can be cached for a year
(``immutable``: not even revalidated on reload) and a new release is never
mixed with an old one in a browser's cache. The pages that name the assets
(``/``, ``/docs``) are ``no-cache``: they are revalidated on every load, and
so always name the current assets. No build step: the names come from the
files as committed.
"""

from __future__ import annotations

import functools
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from quart import Response, send_file

from quart_app.errors import NotFound

STATIC_ROOT = Path(__file__).resolve().parent.parent / "static"
URL_PREFIX = "/static/"
HASH_CHARS = 12
# A year (RFC 9111 section 5.2.2.1: a year is the conventional "never").
IMMUTABLE = "public, max-age=31536000, immutable"
# The pages naming the assets: a cache may keep them, but asks every time.
REVALIDATE = "no-cache"
# Templates are rendered by views, not served; notes and licences are for people.
NOT_SERVED = frozenset({".html", ".md"})
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


@dataclass(frozen=True)
class AssetManifest:
    """Logical names (``page/page.js``) to hashed ones and back."""

    hashed: dict[str, str]
    files: dict[str, Path]

    def url(self, name: str) -> str:
        """The URL of the asset called ``name`` (KeyError if there is none),
        relative to the pages that name it (``/``, ``/docs``: both at the
        app's root), so that a proxy's path prefix carries over."""
        return URL_PREFIX.lstrip("/") + self.hashed[name]


def hashed_name(name: str, content: bytes) -> str:
    path = PurePosixPath(name)
    digest = hashlib.sha256(content).hexdigest()[:HASH_CHARS]
    return str(path.with_name(f"{path.stem}.{digest}{path.suffix}"))


@functools.cache
def manifest(root: Path = STATIC_ROOT) -> AssetManifest:
    """The assets under ``root``; read once per process (the package's
    files do not change while it runs)."""
    hashed: dict[str, str] = {}
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix in NOT_SERVED or path.name in ("LICENSE", "NOTICE"):
            continue
        name = path.relative_to(root).as_posix()
        served = hashed_name(name, path.read_bytes())
        hashed[name] = served
        files[served] = path
    return AssetManifest(hashed, files)


async def send_asset(served: str) -> Response:
    """The asset whose hashed name is ``served``, cacheable for a year; a
    name that is not one (an old hash, a guess, a path) is a 404."""
    path = manifest().files.get(served)
    if path is None:
        raise NotFound("There is no such asset.")
    mimetype = TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
    response = await send_file(path, mimetype=mimetype or "application/octet-stream")
    response.headers["Cache-Control"] = IMMUTABLE
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
