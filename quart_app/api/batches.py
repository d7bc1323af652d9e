"""Batches: the files one multipart request created together."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify
from quart_schema import document_response

from ..db import get_session
from ..schemas import BatchOut
from ..services.files import get_batch
from .openapi import problems
from .representations import batch_body

blueprint = Blueprint("batches", __name__)


@blueprint.get("/batches/<batch_id>")
@document_response(BatchOut)
@problems(404)
async def get_one(batch_id: str) -> Response:
    """A batch and its files."""
    batch, files = await get_batch(get_session(), batch_id)
    return jsonify(batch_body(batch, files))
