"""Resumable uploads: tus 1.0.0 at /uploads (core, creation,
creation-with-upload, creation-defer-length, termination, checksum,
expiration). A second PATCH on an upload while one is running (holding its lease,
services/upload_leases.py) gets 423."""

from __future__ import annotations

import mimetypes
from datetime import timedelta
from typing import Any

from quart import Blueprint, Response, jsonify, request, url_for
from quart_schema import document_headers, document_response
from sqlalchemy.ext.asyncio import AsyncSession
from werkzeug.http import http_date

from quart_app.db.models import Upload
from quart_app.edge.authentication import current_access
from quart_app.edge.bodies import body_limit, upload_body_limit
from quart_app.edge.disposition import clean_filename
from quart_app.edge.idempotency import idempotent, record_response
from quart_app.edge.multipart import upload_content_type
from quart_app.edge.openapi import problems
from quart_app.edge.responses import created, empty_response
from quart_app.edge.schemas import (
    LocationHeader,
    NoContent,
    TusCreateHeaders,
    TusHeaders,
    TusPatchHeaders,
    UploadOut,
)
from quart_app.edge.tus_headers import (
    OFFSET_CONTENT_TYPE,
    TUS_EXTENSIONS,
    TUS_VERSION,
    parse_checksum,
    parse_count,
    parse_metadata,
)
from quart_app.edge.upload_body import request_chunks
from quart_app.errors import (
    InvalidInput,
    TooLarge,
    UnsupportedMediaType,
    UnsupportedProtocolVersion,
)
from quart_app.services.resumable_uploads import (
    CHECKSUM_ALGORITHMS,
    UploadSpec,
    create_upload,
    get_upload,
    terminate,
)
from quart_app.services.upload_patches import Patch, append
from quart_app.state import app_state, request_session

blueprint = Blueprint("uploads", __name__)


def _expires_in() -> timedelta:
    return timedelta(seconds=app_state().settings.UPLOAD_EXPIRES_SECONDS)


@blueprint.before_request
async def _require_tus_version() -> None:
    if request.method != "OPTIONS" and request.headers.get("Tus-Resumable") != TUS_VERSION:
        raise UnsupportedProtocolVersion(
            f"This server speaks tus {TUS_VERSION}: send Tus-Resumable.",
            headers={"Tus-Version": TUS_VERSION},
        )


@blueprint.after_request
async def _tus_headers(response: Response) -> Response:
    response.headers["Tus-Resumable"] = TUS_VERSION
    return response


def upload_headers(upload: Upload) -> dict[str, str]:
    headers = {
        "Upload-Offset": str(upload.offset),
        "Upload-Expires": http_date(upload.expires_at),
        "Cache-Control": "no-store",
    }
    if upload.length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(upload.length)
    if upload.upload_metadata:
        headers["Upload-Metadata"] = upload.upload_metadata
    if upload.completed_at is not None:
        file_url = url_for("files.get_one", file_id=upload.id, _external=True)
        headers["Link"] = f'<{file_url}>; rel="related"'
    return headers


def upload_body(upload: Upload) -> dict[str, Any]:
    links = {"self": url_for("uploads.get_one", upload_id=upload.id, _external=True)}
    if upload.completed_at is not None:
        links["file"] = url_for("files.get_one", file_id=upload.id, _external=True)
    return UploadOut(
        id=upload.id,
        offset=upload.offset,
        length=upload.length,
        filename=upload.filename,
        content_type=upload.content_type,
        created_at=upload.created_at,
        expires_at=upload.expires_at,
        completed=upload.completed_at is not None,
        links=links,
    ).model_dump(mode="json")


@blueprint.route("/uploads", methods=["OPTIONS"], provide_automatic_options=False)
@document_response(NoContent, 204)
async def options() -> Response:
    """What this tus server supports."""
    return empty_response(
        204,
        {
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": TUS_EXTENSIONS,
            "Tus-Max-Size": str(app_state().settings.MAX_UPLOAD_BYTES),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
        },
    )


def _creation_spec() -> UploadSpec:
    config = app_state().settings
    length = parse_count("Upload-Length", request.headers.get("Upload-Length"))
    defer = request.headers.get("Upload-Defer-Length")
    if (length is None) == (defer is None) or (defer is not None and defer.strip() != "1"):
        raise InvalidInput(
            "Send Upload-Length, or Upload-Defer-Length: 1 (not both).",
            errors=[{"field": "Upload-Length", "message": "required unless deferred"}],
        )
    if length is not None and length > config.MAX_UPLOAD_BYTES:
        raise TooLarge(f"Upload-Length is over the limit of {config.MAX_UPLOAD_BYTES} bytes.")
    header = request.headers.get("Upload-Metadata")
    metadata = parse_metadata(header)
    raw_name = metadata.get("filename") or metadata.get("name")
    filename = clean_filename(raw_name, config.MAX_FILENAME_CHARS) if raw_name else "upload"
    given_type = metadata.get("filetype") or metadata.get("type") or metadata.get("contentType")
    content_type = upload_content_type(given_type or mimetypes.guess_type(filename)[0])
    return UploadSpec(length, header, filename, content_type)


def _patch(offset: int) -> Patch:
    return Patch(
        offset=offset,
        checksum=parse_checksum(request.headers.get("Upload-Checksum")),
        new_length=parse_count("Upload-Length", request.headers.get("Upload-Length")),
        max_length=app_state().settings.MAX_UPLOAD_BYTES,
        expires_in=_expires_in(),
        lease_seconds=app_state().settings.UPLOAD_LEASE_SECONDS,
    )


def _has_offset_body() -> bool:
    return request.mimetype == OFFSET_CONTENT_TYPE


@blueprint.post("/uploads")
@body_limit(upload_body_limit)
@idempotent
@document_headers(TusCreateHeaders)
@document_response(UploadOut, 201, LocationHeader)
@problems(400, 409, 412, 413, 415, 422, 507)
async def create() -> Response:
    """Create an upload (tus creation); a body of
    application/offset+octet-stream is its first chunk."""
    access = current_access()
    spec = _creation_spec()
    with_body = _has_offset_body()
    patch = _patch(0) if with_body else None
    responses: list[Response] = []

    async def respond(session: AsyncSession, upload: Upload) -> None:
        """Inside the transaction that ends the request's work: the creation,
        or with a first chunk, the one that commits its offset."""
        headers = upload_headers(upload)
        wanted = ("Upload-Offset", "Upload-Expires", "Link") if with_body else ("Upload-Expires",)
        response = created(
            upload_body(upload),
            url_for("uploads.get_one", upload_id=upload.id, _external=True),
            {name: headers[name] for name in wanted if name in headers},
        )
        await record_response(session, response)
        responses.append(response)

    first_chunk_follows = patch is not None and spec.length != 0
    upload = await app_state().database.commits.run_to_completion(
        create_upload(
            app_state().database,
            app_state().store,
            app_state().quotas,
            access.user_id,
            spec,
            _expires_in(),
            before_commit=None if first_chunk_follows else respond,
        )
    )
    if patch is not None and first_chunk_follows:
        await append(
            app_state().database,
            app_state().store,
            app_state().upload_hashes,
            app_state().quotas,
            access,
            upload.id,
            request_chunks(),
            patch,
            respond,
        )
    return responses[-1]


@blueprint.get("/uploads/<upload_id>")
@document_headers(TusHeaders)
@document_response(UploadOut)
@problems(404, 410, 412)
async def get_one(upload_id: str) -> Response:
    """The upload, with the tus offset headers (HEAD: the headers alone)."""
    upload = await get_upload(request_session(), upload_id, current_access())
    response = jsonify(upload_body(upload))
    response.headers.update(upload_headers(upload))
    return response


@blueprint.patch("/uploads/<upload_id>")
@body_limit(upload_body_limit)
@document_headers(TusPatchHeaders)
@document_response(NoContent, 204)
@problems(400, 404, 409, 410, 412, 413, 415, 423, 460, 507)
async def patch_one(upload_id: str) -> Response:
    """Append bytes at Upload-Offset; 204 with the new offset."""
    if not _has_offset_body():
        raise UnsupportedMediaType(f"PATCH bodies must be {OFFSET_CONTENT_TYPE}.")
    offset = parse_count("Upload-Offset", request.headers.get("Upload-Offset"))
    if offset is None:
        raise InvalidInput(
            "Upload-Offset is required.",
            errors=[{"field": "Upload-Offset", "message": "required"}],
        )
    upload = await append(
        app_state().database,
        app_state().store,
        app_state().upload_hashes,
        app_state().quotas,
        current_access(),
        upload_id,
        request_chunks(),
        _patch(offset),
    )
    headers = upload_headers(upload)
    return empty_response(
        204, {k: headers[k] for k in ("Upload-Offset", "Upload-Expires", "Link") if k in headers}
    )


@blueprint.delete("/uploads/<upload_id>")
@document_headers(TusHeaders)
@document_response(NoContent, 204)
@problems(404, 410, 412, 423)
async def delete_one(upload_id: str) -> Response:
    """Terminate an upload (tus termination); a completed upload's file stays."""
    await app_state().database.commits.run_to_completion(
        terminate(app_state().database, app_state().store, current_access(), upload_id)
    )
    return empty_response(204, {})
