"""Signed download links: made, listed and revoked by the file's owner with a
key; followed by anyone, without one (services/download_links.py has the
token's design)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from quart import Blueprint, Response, jsonify, request, url_for
from quart_schema import document_request, document_response
from sqlalchemy.ext.asyncio import AsyncSession

from quart_app.db.models import DownloadLink, File, utc_now
from quart_app.edge.access_log import note
from quart_app.edge.authentication import current_access, public
from quart_app.edge.content import content_response
from quart_app.edge.idempotency import refuse_idempotency_key
from quart_app.edge.json_body import read_model
from quart_app.edge.openapi import problems
from quart_app.edge.responses import created, empty_response
from quart_app.edge.schemas import (
    Binary,
    ContentHeaders,
    LinkCreate,
    LinkList,
    LinkOut,
    LocationHeader,
    NoContent,
)
from quart_app.errors import InvalidInput
from quart_app.services.download_links import create_link, linked_file, list_links, revoke_link
from quart_app.services.downloads import open_content
from quart_app.state import app_state, request_session

blueprint = Blueprint("links", __name__)

# What a link's answer adds to the content URL's: the token is in the URL,
# so no Referer carries it on and no search engine indexes what a link
# pasted somewhere public serves; no shared cache keeps a copy that would
# outlive a revocation.
LINK_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "Cache-Control": "private, no-cache",
}


def link_body(link: DownloadLink, file: File, token: str | None = None) -> dict[str, Any]:
    return LinkOut(
        id=link.id,
        url=None if token is None else url_for("links.download", token=token, _external=True),
        file=url_for("files.get_one", file_id=file.id, _external=True),
        created_at=link.created_at,
        expires_at=link.expires_at,
        revoked_at=link.revoked_at,
    ).model_dump(mode="json")


async def _lifetime() -> timedelta:
    data = await read_model(LinkCreate, optional=True)
    settings = app_state().settings
    if data.expires_in is None:
        return timedelta(seconds=settings.LINK_EXPIRES_SECONDS)
    if data.expires_in > settings.LINK_MAX_EXPIRES_SECONDS:
        longest = int(settings.LINK_MAX_EXPIRES_SECONDS)
        raise InvalidInput(
            f"A link lives at most {longest} seconds.",
            errors=[{"field": "expires_in", "message": f"at most {longest}"}],
        )
    return timedelta(seconds=data.expires_in)


@blueprint.post("/files/<file_id>/links")
@document_request(LinkCreate)
@document_response(LinkOut, 201, LocationHeader)
@problems(400, 401, 403, 404, 409, 413, 415)
async def post_link(file_id: str) -> Response:
    """A link that downloads the file's content without a key until it
    expires; Location and `url` are that link, shown this once. The body is
    optional."""
    access = current_access()
    refuse_idempotency_key(
        "Link creation takes no Idempotency-Key: its answer holds a URL that is "
        "never stored. Retry without one and revoke a link you did not get.",
    )
    lifetime = await _lifetime()
    async with app_state().database.writing(request_session()) as session:
        link, file, token = await create_link(session, access, file_id, lifetime)
        body = link_body(link, file, token)
    response = created(body, body["url"])
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/files/<file_id>/links")
@document_response(LinkList)
@problems(401, 403, 404)
async def get_links(file_id: str) -> Response:
    """The file's links, revoked and expired ones until they are swept,
    without their URLs."""
    file, links = await list_links(request_session(), current_access(), file_id)
    return jsonify({"items": [link_body(link, file) for link in links], "next": None})


@blueprint.delete("/files/<file_id>/links/<link_id>")
@document_response(NoContent, 204)
@problems(401, 403, 404)
async def delete_link(file_id: str, link_id: str) -> Response:
    """Revoke the link: from the moment this answers, it is refused."""
    access = current_access()
    async with app_state().database.writing(request_session()) as session:
        await revoke_link(session, access, file_id, link_id)
    return empty_response(204)


@blueprint.get("/links/<token>")
@public
@document_response(Binary, 200, ContentHeaders)
@document_response(Binary, 206, ContentHeaders)
@problems(403, 412, 416, 503)
async def download(token: str) -> Response:
    """The linked file's bytes, without a key, as `/files/{id}/content`
    answers them. A link that is malformed, unknown, expired or revoked, or
    whose file is gone, gets the same 403 `link-refused`."""
    now = utc_now()
    links: list[DownloadLink] = []

    async def find(session: AsyncSession) -> File:
        link, file = await linked_file(session, token, now)
        links.append(link)
        return file

    file, blob = await open_content(app_state().database, app_state().store, find, "this link")
    note(request.scope, link_id=links[-1].id)
    return content_response(file, blob, LINK_HEADERS)
