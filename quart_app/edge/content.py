"""The answer that carries a file's bytes: validators, conditional requests,
one range, and the headers that keep a browser from running what it gets.

``GET /files/{id}/content`` (with a key) and ``GET /links/{token}`` (a
signed download link, without one) both answer with it, so a link behaves
exactly as the content URL does.
"""

from __future__ import annotations

from quart import Response, request
from werkzeug.http import http_date

from quart_app.db.models import File
from quart_app.edge.conditional import (
    UnsatisfiableRange,
    if_match_passes,
    if_none_match_passes,
    not_modified_since,
    requested_range,
    strong_etag,
)
from quart_app.edge.disposition import download_disposition
from quart_app.edge.responses import empty_response
from quart_app.errors import PreconditionFailed, RangeNotSatisfiable
from quart_app.storage import BlobReader

# Downloads may be opened by a browser: never let them run or fetch anything.
DOWNLOAD_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


def content_response(
    file: File, blob: BlobReader, extra_headers: dict[str, str] | None = None
) -> Response:
    """The answer for this version of the file. Owns ``blob`` from here:
    closed now unless a GET's 200/206 body will read (and close) it."""
    try:
        response = _content_response(file, blob, extra_headers or {})
    except BaseException:
        blob.close()
        raise
    if response.status_code not in (200, 206) or request.method == "HEAD":
        blob.close()  # no body will read it
    return response


def _content_response(file: File, blob: BlobReader, extra_headers: dict[str, str]) -> Response:
    etag = strong_etag(file.sha256)
    headers = {
        "ETag": etag,
        "Last-Modified": http_date(file.updated_at),
        "Accept-Ranges": "bytes",
        "Content-Disposition": download_disposition(file.filename, file.content_type),
        "Cache-Control": "no-cache",
        **DOWNLOAD_SECURITY_HEADERS,
        **extra_headers,
    }
    if not if_match_passes(request.headers.get("If-Match"), etag):
        raise PreconditionFailed("If-Match does not match the file's ETag.")
    if_none_match = request.headers.get("If-None-Match")
    if not if_none_match_passes(if_none_match, etag) or (
        if_none_match is None
        and not_modified_since(request.headers.get("If-Modified-Since"), file.updated_at)
    ):
        return empty_response(304, headers)
    try:
        byte_range = requested_range(
            request.headers.get("Range"),
            file.size,
            request.headers.get("If-Range"),
            etag,
            file.updated_at,
        )
    except UnsatisfiableRange as error:
        raise RangeNotSatisfiable(
            f"The range lies outside the file's {error.size} bytes.",
            headers={"Content-Range": f"bytes */{error.size}"},
        ) from None
    start, end, status = 0, file.size, 200
    if byte_range is not None:
        start, end, status = byte_range.start, byte_range.end, 206
        headers["Content-Range"] = byte_range.content_range(file.size)
    body = blob.chunks(start, end) if request.method != "HEAD" else b""
    response = Response(body, status=status, content_type=file.content_type, headers=headers)
    response.headers["Content-Length"] = str(end - start)
    return response
