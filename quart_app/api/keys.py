"""API keys of a user: created (the secret shown once), listed, revoked."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from quart import Blueprint, Response, jsonify, url_for
from quart_schema import document_request, document_response

from quart_app.db.models import ApiKey, utc_now
from quart_app.edge.authentication import current_access
from quart_app.edge.idempotency import refuse_idempotency_key
from quart_app.edge.json_body import read_model
from quart_app.edge.openapi import problems
from quart_app.edge.responses import created, empty_response
from quart_app.edge.schemas import KeyCreate, KeyCreated, KeyList, KeyOut, LocationHeader, NoContent
from quart_app.services.accounts import create_key, get_key, list_keys, parse_scopes, revoke_key
from quart_app.services.users import get_user
from quart_app.state import app_state, request_session

blueprint = Blueprint("keys", __name__)


def key_body(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": key.id,
        "prefix": key.prefix,
        "scopes": key.scopes.split(),
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
    }
    if secret is None:
        return KeyOut(**fields).model_dump(mode="json")
    return KeyCreated(**fields, secret=secret).model_dump(mode="json")


def key_url(key: ApiKey) -> str:
    return url_for("keys.get_one", user_id=key.user_id, key_id=key.id, _external=True)


@blueprint.post("/users/<int:user_id>/keys")
@document_request(KeyCreate)
@document_response(KeyCreated, 201, LocationHeader)
@problems(400, 401, 403, 404, 409, 413, 415)
async def post_key(user_id: int) -> Response:
    """A new key for the user; the answer is the only place its secret ever
    appears. Not idempotent: a stored answer would keep the secret in clear."""
    access = current_access()
    refuse_idempotency_key(
        "Key creation takes no Idempotency-Key: its answer holds a secret that "
        "is never stored. Retry without one and revoke a key you did not get.",
    )
    data = await read_model(KeyCreate)
    async with app_state().database.writing(request_session()) as session:
        await get_user(session, access, user_id)
        expires_at = None
        if data.expires_in is not None:
            expires_at = utc_now() + timedelta(seconds=data.expires_in)
        key, secret = await create_key(
            session, user_id, parse_scopes(list(data.scopes)), expires_at, granted_by=access
        )
        response = created(key_body(key, secret), key_url(key))
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/users/<int:user_id>/keys")
@document_response(KeyList)
@problems(401, 403, 404)
async def get_keys(user_id: int) -> Response:
    """The user's keys, revoked ones included, without their secrets."""
    session = request_session()
    await get_user(session, current_access(), user_id)
    keys = await list_keys(session, user_id)
    return jsonify({"items": [key_body(k) for k in keys], "next": None})


@blueprint.get("/users/<int:user_id>/keys/<key_id>")
@document_response(KeyOut)
@problems(401, 403, 404)
async def get_one(user_id: int, key_id: str) -> Response:
    """One key, without its secret."""
    session = request_session()
    await get_user(session, current_access(), user_id)
    return jsonify(key_body(await get_key(session, user_id, key_id)))


@blueprint.delete("/users/<int:user_id>/keys/<key_id>")
@document_response(NoContent, 204)
@problems(401, 403, 404)
async def delete_one(user_id: int, key_id: str) -> Response:
    """Revoke the key: every worker refuses it within KEY_CACHE_SECONDS."""
    access = current_access()
    async with app_state().database.writing(request_session()) as session:
        await get_user(session, access, user_id)
        await revoke_key(session, user_id, key_id)
    return empty_response(204)
