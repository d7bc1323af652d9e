"""QUART_APP_PUBLIC_URL: the one origin every absolute URL is built from.

Quart's ``url_for(..., _external=True)`` takes the scheme from the ASGI
scope, the host from the Host header and the prefix from ``root_path``.
Setting ``SERVER_NAME`` instead would change routing as well (Quart then
treats any other Host as an unknown subdomain: a warning and a 404), and
would leave the scheme and the prefix alone. So the scope itself is
rewritten, innermost, just before Quart sees it: the Host header, the scheme
and ``root_path`` become the public URL's, and every URL the app builds
(``Location``, ``Link``, links in bodies, ``existing`` in a 409, paging
``next``) follows, including those stored for Idempotency-Key replays.

A path in the public URL is the prefix the proxy strips before passing the
request on (nginx ``location /files/ { proxy_pass http://app/; }``): the app
keeps serving at ``/`` (so a health check straight to Hypercorn still
works) and only its URLs carry the prefix. ASGI wants ``path`` to include
``root_path``, which is why the prefix is put in front of it here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from quart import Quart

from quart_app.config import ENV_PREFIX, ConfigError, Settings
from quart_app.edge.hosts import parse_host

# Path segments of RFC 3986 (unreserved, sub-delims, ":", "@", %XX).
_SEGMENT = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})+")


@dataclass(frozen=True)
class PublicUrl:
    scheme: str
    host: str
    root_path: str

    @classmethod
    def parse(cls, text: str) -> PublicUrl | None:
        """None for an empty setting; ValueError for anything but an
        absolute http(s) URL with a host and no userinfo, query or fragment."""
        text = text.strip()
        if not text:
            return None
        parts = urlsplit(text)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http:// or https:// URL")
        if "?" in text or "#" in text:
            raise ValueError("must have no query or fragment")
        if "@" in parts.netloc or parse_host(parts.netloc) is None:
            raise ValueError(f"{parts.netloc!r} is not a host with an optional port")
        root_path = parts.path.rstrip("/")
        segments = root_path.split("/")[1:]
        if any(s in (".", "..") or not _SEGMENT.fullmatch(s) for s in segments):
            raise ValueError(f"{parts.path!r} is not a plain path prefix")
        # root_path is text, like path: Werkzeug quotes it again in URLs.
        return cls(parts.scheme.lower(), parts.netloc.lower(), unquote(root_path))

    def apply(self, scope: Any) -> Any:
        """A copy of ``scope`` as if the request had come to this URL."""
        path = scope["path"]
        # A root_path set earlier (Hypercorn's --root-path) is replaced by ours.
        old_root = scope.get("root_path") or ""
        if old_root and path.startswith(old_root):
            path = path[len(old_root) :]
        headers = [(name, value) for name, value in scope["headers"] if name.lower() != b"host"]
        headers.append((b"host", self.host.encode("ascii")))
        scheme = self.scheme
        if scope["type"] == "websocket":
            scheme = "wss" if scheme == "https" else "ws"
        return {
            **scope,
            "scheme": scheme,
            "headers": headers,
            "root_path": self.root_path,
            "path": self.root_path + path,
        }


class PublicUrlMiddleware:
    def __init__(self, app: Any, public_url: PublicUrl) -> None:
        self.app = app
        self.public_url = public_url

    async def __call__(
        self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = self.public_url.apply(scope)
        await self.app(scope, receive, send)


def init_app(app: Quart, settings: Settings) -> None:
    """Innermost middleware (inside the method override, which matches
    paths without the prefix), when a public URL is set."""
    try:
        public_url = PublicUrl.parse(settings.PUBLIC_URL)
    except ValueError as error:
        raise ConfigError(
            f"{ENV_PREFIX}PUBLIC_URL has an invalid value {settings.PUBLIC_URL!r}: {error}"
        ) from None
    if public_url is not None:
        app.asgi_app = PublicUrlMiddleware(app.asgi_app, public_url)  # type: ignore[method-assign]
