"""The JSON bodies of files, batches and import jobs, shared by their blueprints."""

from __future__ import annotations

import json
from typing import Any

from quart import url_for

from quart_app.db.models import Batch, File, ImportJob
from quart_app.edge.conditional import strong_etag
from quart_app.edge.problem_details import problem_document
from quart_app.edge.schemas import FileLinks, FileOut, ImportOut
from quart_app.errors import DomainError, ImportFailed, QuotaExceeded


def rfc3339(moment: Any) -> str:
    text: str = moment.isoformat()
    return text.replace("+00:00", "Z")


def file_body(file: File) -> dict[str, Any]:
    return FileOut(
        id=file.id,
        filename=file.filename,
        content_type=file.content_type,
        size=file.size,
        sha256=file.sha256,
        etag=strong_etag(file.sha256),
        created_at=file.created_at,
        updated_at=file.updated_at,
        links=FileLinks(
            self=url_for("files.get_one", file_id=file.id, _external=True),
            content=url_for("files.get_content", file_id=file.id, _external=True),
        ),
    ).model_dump(mode="json")


def batch_body(batch: Batch, files: list[File]) -> dict[str, Any]:
    return {
        "id": batch.id,
        "created_at": rfc3339(batch.created_at),
        "files": [file_body(f) for f in files],
    }


def job_url(job: ImportJob) -> str:
    return url_for("imports.get_one", job_id=job.id, _external=True)


def job_body(job: ImportJob) -> dict[str, Any]:
    result = None
    if job.batch_id is not None:
        result = {"batch": url_for("batches.get_one", batch_id=job.batch_id, _external=True)}
    return ImportOut(
        id=job.id,
        status=job.status,
        filename=job.filename,
        archive_format=job.archive_format,
        archive_size=job.archive_size,
        progress={
            "entries_done": job.entries_done,
            "entries_total": job.entries_total,
            "bytes_done": job.bytes_done,
        },
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        result=result,
        problem=None if job.problem is None else _problem(json.loads(job.problem)),
        links={"self": job_url(job)},
    ).model_dump(mode="json")


# The problem types an import job may end with.
JOB_PROBLEMS: dict[str, type[DomainError]] = {
    ImportFailed.code: ImportFailed,
    QuotaExceeded.code: QuotaExceeded,
}


def _problem(kept: dict[str, Any]) -> dict[str, Any]:
    entry = kept.get("entry")
    members = {} if entry is None else {"entry": entry}
    kind = JOB_PROBLEMS.get(kept.get("code", ImportFailed.code), ImportFailed)
    return problem_document(kind(kept["detail"], **members))
