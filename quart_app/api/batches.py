"""Batches: the files one multipart request created together."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify
from quart_schema import document_response

from quart_app.edge.authentication import current_access
from quart_app.edge.openapi import problems
from quart_app.edge.representations import batch_body
from quart_app.edge.schemas import BatchOut
from quart_app.services.files import get_batch
from quart_app.state import request_session

blueprint = Blueprint("batches", __name__)


@blueprint.get("/batches/<batch_id>")
@document_response(BatchOut)
@problems(404)
async def get_one(batch_id: str) -> Response:
    """A batch and its files."""
    batch, files = await get_batch(request_session(), current_access(), batch_id)
    return jsonify(batch_body(batch, files))
