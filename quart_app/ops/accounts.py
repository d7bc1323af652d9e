"""Operator commands for accounts: the way in before any key exists.

``python -m quart_app users create --name N --email E`` prints the new
user's id; ``python -m quart_app keys create --user ID --scope read --scope
write`` prints a new key, once (only its hash is stored). Both work while a
server runs on the same database.
"""

from __future__ import annotations

from datetime import timedelta

from quart_app.db.engine import Database
from quart_app.db.models import utc_now
from quart_app.errors import DomainError, NotFound
from quart_app.services.accounts import Access, create_key, parse_scopes
from quart_app.services.users import create_user, get_user

# The command line acts with every right, as an admin key does.
OPERATOR = Access(0, "command-line", frozenset({"read", "write", "admin"}))


class CommandFailed(Exception):
    """What the operator asked cannot be done; the message says why."""


async def create_user_command(database: Database, name: str, email: str) -> str:
    from quart_app.edge.schemas import UserCreate  # the API's own validation

    try:
        data = UserCreate.model_validate({"name": name, "email": email})
    except ValueError as error:
        raise CommandFailed(f"invalid user: {error}") from None
    try:
        async with database.sessionmaker() as session, database.writing(session):
            user = await create_user(session, data.name, data.email)
            user_id = user.id
    except DomainError as error:
        raise CommandFailed(error.detail) from None
    return f"user {user_id} created ({data.email}); give it a key: keys create --user {user_id}"


async def create_key_command(
    database: Database, user_id: int, scopes: list[str], expires_in: int | None
) -> str:
    try:
        wanted = parse_scopes(scopes or ["read", "write"])
    except ValueError as error:
        raise CommandFailed(str(error)) from None
    expires_at = None if expires_in is None else utc_now() + timedelta(seconds=expires_in)
    try:
        async with database.sessionmaker() as session, database.writing(session):
            if user_id != 0:
                await get_user(session, OPERATOR, user_id)
            else:
                from quart_app.services.accounts import operator_id

                await operator_id(session)
            key, secret = await create_key(session, user_id, wanted, expires_at)
            key_id = key.id
    except NotFound:
        raise CommandFailed(f"there is no user {user_id}") from None
    except DomainError as error:
        raise CommandFailed(error.detail) from None
    # The secret alone on the first line, so that scripts can take it.
    return f"{secret}\nkey {key_id} for user {user_id}, scopes {' '.join(wanted)}; shown only once"
