"""Archive imports: 202 Accepted + Location of a durable job (DESIGN section 5)."""

from __future__ import annotations

from datetime import timedelta

from quart import Blueprint, Response, jsonify
from quart_schema import document_headers, document_querystring, document_request, document_response
from quart_schema.validation import DataSource
from sqlalchemy.ext.asyncio import AsyncSession

from quart_app.db.models import ImportJob
from quart_app.edge.authentication import current_access
from quart_app.edge.bodies import body_limit, upload_body_limit
from quart_app.edge.idempotency import IdempotencyHeaders, idempotent, record_response
from quart_app.edge.openapi import problems
from quart_app.edge.paging_links import page_request, page_response
from quart_app.edge.representations import job_body, job_url
from quart_app.edge.schemas import (
    AcceptedHeaders,
    FileUpload,
    ImportOut,
    ImportPage,
    LinkHeader,
    PageQuery,
    RetryAfterHeader,
)
from quart_app.edge.upload_body import commit_or_discard, receive_upload
from quart_app.services.archives import SniffingWriter
from quart_app.services.imports import FINISHED, cancel_job, create_job, get_job, list_jobs
from quart_app.state import app_state, request_session
from quart_app.storage import BlobWriter

blueprint = Blueprint("imports", __name__)

CURSOR_RESOURCE = "imports"
# Seconds a client should wait before asking about an unfinished job again.
POLL_AFTER = 1


def job_response(job: ImportJob, status: int = 200) -> Response:
    response = jsonify(job_body(job))
    response.status_code = status
    if job.status not in FINISHED:
        response.headers["Retry-After"] = str(POLL_AFTER)
    return response


def _sniffing(writer: BlobWriter) -> BlobWriter:
    return SniffingWriter(writer)


@blueprint.post("/imports")
@body_limit(upload_body_limit)
@idempotent
@document_headers(IdempotencyHeaders)
@document_request(FileUpload, source=DataSource.FORM_MULTIPART)
@document_response(ImportOut, 202, AcceptedHeaders)
@problems(400, 409, 413, 415, 422, 507)
async def post_import() -> Response:
    """Import an archive (zip, tar, tar.gz, tar.bz2, tar.xz; raw body or one
    multipart file part): stored, then 202 with the Location of its job."""
    access = current_access()
    [archive] = await receive_upload(
        access.user_id, wrap=_sniffing, max_parts=1, default_filename="archive"
    )
    assert isinstance(archive.writer, SniffingWriter) and archive.writer.format is not None
    archive_format = archive.writer.format
    responses: list[Response] = []

    async def respond(session: AsyncSession, job: ImportJob) -> None:
        response = job_response(job, 202)
        response.headers["Location"] = job_url(job)
        await record_response(session, response)
        responses.append(response)

    settings = app_state().settings
    await commit_or_discard(
        [archive],
        create_job(
            app_state().database,
            app_state().store,
            access.user_id,
            archive,
            archive_format,
            timedelta(seconds=settings.IMPORT_EXPIRES_SECONDS),
            before_commit=respond,
        ),
    )
    app_state().import_wake.set()
    return responses[0]


@blueprint.get("/imports/<job_id>")
@document_response(ImportOut, 200, RetryAfterHeader)
@problems(404)
async def get_one(job_id: str) -> Response:
    """The job: its status and progress; Retry-After until it has ended."""
    return job_response(await get_job(request_session(), current_access(), job_id))


@blueprint.get("/imports")
@document_querystring(PageQuery)
@document_response(ImportPage, 200, LinkHeader)
@problems(400)
async def get_page() -> Response:
    """The key's import jobs (an admin's: everyone's), oldest first."""
    after, limit = page_request(CURSOR_RESOURCE)
    jobs, more = await list_jobs(request_session(), current_access(), after, limit)
    last = jobs[-1].seq if more else None
    return page_response(
        CURSOR_RESOURCE, "imports.get_page", [job_body(j) for j in jobs], last, limit
    )


@blueprint.delete("/imports/<job_id>")
@document_response(ImportOut, 200)
@problems(404, 409)
async def delete_one(job_id: str) -> Response:
    """Cancel a queued or running import: it ends canceled and nothing of it
    remains. 409 once it has ended."""
    settings = app_state().settings
    job = await app_state().database.commits.run_to_completion(
        cancel_job(
            app_state().database,
            app_state().store,
            current_access(),
            job_id,
            timedelta(seconds=settings.IMPORT_EXPIRES_SECONDS),
        )
    )
    return job_response(job)
