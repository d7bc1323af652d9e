"""The JSON bodies of files and batches, shared by their blueprints."""

from __future__ import annotations

from typing import Any

from quart import url_for

from quart_app.db.models import Batch, File
from quart_app.edge.conditional import strong_etag
from quart_app.edge.schemas import FileLinks, FileOut


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
