"""Files: streamed uploads (multipart, raw POST, PUT), metadata, downloads."""

from __future__ import annotations

import re

from quart import Blueprint, Response, g, jsonify, request, url_for
from quart_schema import (
    document_headers,
    document_querystring,
    document_request,
    document_response,
)
from quart_schema.validation import DataSource
from sqlalchemy.ext.asyncio import AsyncSession

from quart_app.db.models import Batch, File
from quart_app.edge.authentication import current_access
from quart_app.edge.bodies import body_limit, upload_body_limit
from quart_app.edge.conditional import if_match_passes, if_none_match_passes, strong_etag
from quart_app.edge.content import content_response
from quart_app.edge.idempotency import IdempotencyHeaders, idempotent, record_response
from quart_app.edge.openapi import problems
from quart_app.edge.paging_links import page_request, page_response
from quart_app.edge.representations import batch_body, file_body
from quart_app.edge.responses import created, empty_response
from quart_app.edge.schemas import (
    FILE_ID_PATTERN,
    Binary,
    ContentHeaders,
    FileOut,
    FilePage,
    FileUpload,
    LinkHeader,
    LocationHeader,
    NoContent,
    PageQuery,
)
from quart_app.edge.upload_body import commit_or_discard, receive_raw, receive_upload
from quart_app.errors import InvalidInput, PreconditionFailed
from quart_app.services.downloads import open_content
from quart_app.services.files import (
    create_files,
    delete_file,
    find_file,
    get_file,
    list_files,
    put_file,
)
from quart_app.services.quotas import Usage
from quart_app.state import app_state, request_session

blueprint = Blueprint("files", __name__)


CURSOR_RESOURCE = "files"
CLIENT_ID = re.compile(FILE_ID_PATTERN)


def file_created(file: File) -> Response:
    body = file_body(file)
    return created(body, body["links"]["self"], {"ETag": body["etag"]})


def file_response(file: File, status: int) -> Response:
    response = jsonify(file_body(file))
    response.status_code = status
    response.headers["ETag"] = strong_etag(file.sha256)
    return response


@blueprint.post("/files")
@body_limit(upload_body_limit)
@idempotent
@document_headers(IdempotencyHeaders)
@document_request(FileUpload, source=DataSource.FORM_MULTIPART)
@document_response(FileOut, 201, LocationHeader)
@problems(400, 409, 413, 415, 422, 507)
async def post_files() -> Response:
    """Upload: multipart (one or several `file` parts) or a raw body named by
    Content-Disposition. Several parts make a batch: all stored or none."""
    access = current_access()
    incoming = await receive_upload(access.user_id)
    for item in incoming:
        item.owner_id = access.user_id
    if len(incoming) == 1 and g.get("idempotency_claim") is None:
        # Nothing to record with the file: it rides the next group commit,
        # which owns it from here (a hang-up must not remove it under the batch).
        file = await app_state().file_batcher.create(incoming[0])
        return file_created(file)
    responses: list[Response] = []

    async def respond(session: AsyncSession, files: list[File], batch: Batch | None) -> None:
        if batch is None:
            response = file_created(files[0])
        else:
            location = url_for("batches.get_one", batch_id=batch.id, _external=True)
            response = created(batch_body(batch, files), location)
        await record_response(session, response)
        responses.append(response)

    await commit_or_discard(
        incoming,
        create_files(
            app_state().database,
            app_state().store,
            access.user_id,
            incoming,
            len(incoming) > 1,
            before_commit=respond,
        ),
    )
    return responses[0]


def _client_file_id(file_id: str) -> str:
    if CLIENT_ID.fullmatch(file_id) is None:
        raise InvalidInput(
            "A file id is 1-128 characters of A-Z a-z 0-9 . _ - and starts with a letter or digit.",
            errors=[{"field": "id", "message": "invalid file id"}],
        )
    return file_id


def _put_precondition(sha256: str | None) -> bool:
    current = None if sha256 is None else strong_etag(sha256)
    return if_match_passes(request.headers.get("If-Match"), current) and if_none_match_passes(
        request.headers.get("If-None-Match"), current
    )


@blueprint.put("/files/<file_id>")
@body_limit(upload_body_limit)
@document_response(FileOut, 201, LocationHeader)
@document_response(FileOut, 200)
@problems(400, 412, 413, 507)
async def put_one(file_id: str) -> Response:
    """Create the file with this id (201) or replace it (200). Honours
    If-Match and If-None-Match: * (412 when they fail)."""
    file_id = _client_file_id(file_id)
    access = current_access()
    # Checked before the body is read, to fail fast, and again when committing.
    # A short session of its own: a read transaction held open for the whole
    # upload would keep SQLite from checkpointing its WAL.
    async with app_state().database.sessionmaker() as session:
        current = await find_file(session, access, file_id)
    if not _put_precondition(None if current is None else current.sha256):
        raise PreconditionFailed("The file's current state does not match the precondition.")
    # A replace counts against its file's owner, for what it adds to the old size.
    owner_id = access.user_id if current is None else current.owner_id
    credit = None if current is None else Usage(current.size, 1)
    incoming = await receive_raw(file_id, app_state().quotas.reservation(owner_id), credit)
    file, is_new = await commit_or_discard(
        [incoming],
        put_file(
            app_state().database, app_state().store, access, file_id, incoming, _put_precondition
        ),
    )
    return file_created(file) if is_new else file_response(file, 200)


@blueprint.get("/files/<file_id>")
@document_response(FileOut)
@problems(404)
async def get_one(file_id: str) -> Response:
    """A file's representation, with its ETag."""
    file = await get_file(request_session(), current_access(), file_id)
    etag = strong_etag(file.sha256)
    if not if_none_match_passes(request.headers.get("If-None-Match"), etag):
        return empty_response(304, {"ETag": etag})
    return file_response(file, 200)


@blueprint.delete("/files/<file_id>")
@document_response(NoContent, 204)
@problems(404, 412)
async def delete_one(file_id: str) -> Response:
    """Delete a file; its bytes go once no other file shares them."""
    await app_state().database.commits.run_to_completion(
        delete_file(
            app_state().database,
            app_state().store,
            current_access(),
            file_id,
            lambda sha256: if_match_passes(
                request.headers.get("If-Match"), None if sha256 is None else strong_etag(sha256)
            ),
        )
    )
    return empty_response(204)


@blueprint.get("/files")
@document_querystring(PageQuery)
@document_response(FilePage, 200, LinkHeader)
@problems(400)
async def get_page() -> Response:
    """Files in creation order, a page at a time; follow `next` or Link."""
    after, limit = page_request(CURSOR_RESOURCE)
    files, more = await list_files(request_session(), current_access(), after, limit)
    items = [file_body(f) for f in files]
    last = files[-1].seq if more else None
    return page_response(CURSOR_RESOURCE, "files.get_page", items, last, limit)


@blueprint.get("/files/<file_id>/content")
@document_response(Binary, 200, ContentHeaders)
@document_response(Binary, 206, ContentHeaders)
@problems(404, 412, 416, 503)
async def get_content(file_id: str) -> Response:
    """The bytes, streamed: ETag, Last-Modified, ranges (206/416), 304."""
    access = current_access()
    # Opened before any header is sent: a replace or delete from here on
    # cannot take the bytes away from a 200 that announced them.
    file, blob = await open_content(
        app_state().database,
        app_state().store,
        lambda session: get_file(session, access, file_id),
        f"file {file_id}",
    )
    return content_response(file, blob)
