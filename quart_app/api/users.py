"""Users (the accounts): JSON records created with 201 + Location."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, g, jsonify, url_for
from quart_schema import (
    document_headers,
    document_querystring,
    document_request,
    document_response,
)
from sqlalchemy.ext.asyncio import AsyncSession

from quart_app.api.keys import key_body
from quart_app.config import Settings
from quart_app.db.models import User
from quart_app.edge.authentication import (
    anonymous_when,
    current_access,
    optional_access,
    requires,
)
from quart_app.edge.idempotency import IdempotencyHeaders, idempotent, record_response
from quart_app.edge.json_body import read_model
from quart_app.edge.openapi import problems
from quart_app.edge.paging_links import page_request, page_response
from quart_app.edge.responses import created
from quart_app.edge.schemas import (
    LinkHeader,
    LocationHeader,
    PageQuery,
    QuotaUpdate,
    SignedUpUser,
    UsageOut,
    UserCreate,
    UserOut,
    UserPage,
)
from quart_app.errors import EmailTaken, InsufficientScope, InvalidInput
from quart_app.services.accounts import DEFAULT_SCOPES, create_key
from quart_app.services.quotas import Usage, usage_of, user_limits
from quart_app.services.users import create_user, get_user, list_users
from quart_app.state import app_state, request_session

blueprint = Blueprint("users", __name__)


CURSOR_RESOURCE = "users"


def user_body(user: User, usage: Usage | None = None) -> dict[str, Any]:
    """The user with its limits and what its files use (``usage`` None: a
    new user, which has none)."""
    limits = user_limits(user, app_state().quotas.defaults)
    used = usage or Usage()
    return UserOut(
        id=user.id,
        name=user.name,
        email=user.email,
        created_at=user.created_at,
        quota_bytes=limits.bytes,
        quota_files=limits.files,
        usage=UsageOut(bytes=used.bytes, files=used.files),
    ).model_dump(mode="json")


async def user_bodies(session: AsyncSession, users: list[User]) -> list[dict[str, Any]]:
    usage = await usage_of(session, [user.id for user in users])
    return [user_body(user, usage[user.id]) for user in users]


def _open_signup(settings: Settings) -> bool:
    return settings.OPEN_SIGNUP


@blueprint.post("/users")
@anonymous_when(_open_signup)
@idempotent
@document_headers(IdempotencyHeaders)
@document_request(UserCreate)
@document_response(UserOut, 201, LocationHeader)
@document_response(SignedUpUser, 201, LocationHeader)
@problems(400, 401, 403, 409, 413, 415, 422, 429)
async def post_user() -> Response:
    """Create a user (an admin key; with open sign-up, anyone: the answer then
    carries the new user's first key). 409 if the email is taken."""
    access = optional_access()
    admin = access is not None and access.admin
    if not admin and not app_state().settings.OPEN_SIGNUP:
        raise InsufficientScope("Creating users needs a key with the 'admin' scope.")
    if not admin and g.get("idempotency_claim") is not None:
        # The record would keep the sign-up's answer, and so its new key's
        # secret, in clear (api/keys.py refuses the header for the same reason).
        raise InvalidInput(
            "A sign-up takes no Idempotency-Key: its answer holds the new user's API key, "
            "which is never stored. Retry without one.",
            errors=[{"field": "Idempotency-Key", "message": "not accepted for a sign-up"}],
        )
    data = await read_model(UserCreate)
    try:
        if g.get("idempotency_claim") is None and admin:
            user = await app_state().user_batcher.create(data.name, data.email)
            return created(user_body(user), _user_url(user.id))
        # With an Idempotency-Key the record must commit with the user, and a
        # sign-up's key with its user, so this create gets a transaction of
        # its own instead of a batch.
        async with app_state().database.writing(request_session()) as session:
            user = await create_user(session, data.name, data.email)
            body = user_body(user)
            if not admin:
                key, secret = await create_key(session, user.id, DEFAULT_SCOPES, None)
                body["key"] = key_body(key, secret)
            response = created(body, _user_url(user.id))
            await record_response(session, response)
        return response
    except EmailTaken as error:
        if admin:  # only an admin may learn who has an email
            error.members["existing"] = _user_url(error.existing_id)
        raise


def _user_url(user_id: int | None) -> str:
    return url_for("users.get_one", user_id=user_id, _external=True)


@blueprint.get("/users/<int:user_id>")
@document_response(UserOut)
@problems(401, 403, 404)
async def get_one(user_id: int) -> Response:
    """One user, as the 201 showed it (a non-admin key: its own user only),
    with its quota and what it uses."""
    session = request_session()
    user = await get_user(session, current_access(), user_id)
    return jsonify((await user_bodies(session, [user]))[0])


@blueprint.patch("/users/<int:user_id>")
@requires("admin")
@document_request(QuotaUpdate)
@document_response(UserOut)
@problems(400, 401, 403, 404, 413, 415)
async def patch_one(user_id: int) -> Response:
    """Set a user's quota (an admin key): `quota_bytes`, `quota_files`, each
    a number (0: unlimited) or null (the configured default)."""
    access = current_access()
    data = await read_model(QuotaUpdate)
    try:
        async with app_state().database.writing(request_session()) as session:
            user = await get_user(session, access, user_id)
            if "quota_bytes" in data.model_fields_set:
                user.quota_bytes = data.quota_bytes
            if "quota_files" in data.model_fields_set:
                user.quota_files = data.quota_files
    finally:
        app_state().quotas.forget(user_id)  # other workers: within KEY_CACHE_SECONDS
    return jsonify((await user_bodies(request_session(), [user]))[0])


@blueprint.get("/users")
@document_querystring(PageQuery)
@document_response(UserPage, 200, LinkHeader)
@problems(400, 401, 403)
async def get_page() -> Response:
    """Users in creation order, a page at a time; follow `next` or Link. A
    non-admin key sees its own user only."""
    after, limit = page_request(CURSOR_RESOURCE)
    session = request_session()
    users, more = await list_users(session, current_access(), after, limit)
    items = await user_bodies(session, users)
    last = users[-1].id if more else None
    return page_response(CURSOR_RESOURCE, "users.get_page", items, last, limit)
