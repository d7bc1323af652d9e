"""Creating, reading and listing users."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from quart_app.db.keyset import keyset_page
from quart_app.db.models import User
from quart_app.errors import EmailTaken, NotFound
from quart_app.services.accounts import Access


async def create_user(session: AsyncSession, name: str, email: str) -> User:
    """Insert a user; the unique constraint, not a prior look-up, decides a
    taken email, so concurrent creates cannot both win.

    Unlike the other writes here it takes a session, inside a write
    transaction the caller holds (Database.writing): with an Idempotency-Key
    the stored response must commit in that same transaction (api/users.py).
    Creates without a key go through UserBatcher (user_batches.py)."""
    user = User(name=name, email=email)
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        existing = await session.scalar(select(User.id).where(User.email == email))
        raise EmailTaken(
            f"A user with the email {email} already exists.", existing_id=existing
        ) from None
    return user


# SQLite (and PostgreSQL's bigint) hold ids up to this; a larger one in a URL
# names no user rather than overflowing the driver.
MAX_ID = 2**63 - 1


async def get_user(session: AsyncSession, access: Access, user_id: int) -> User:
    """The user, if ``access`` reaches it: an admin reaches every user, any
    other key only its own (another user looks like no user)."""
    reachable = 0 <= user_id <= MAX_ID and access.owns(user_id)
    user = await session.get(User, user_id) if reachable else None
    if user is None:
        raise NotFound("There is no such user.")
    return user


async def list_users(
    session: AsyncSession, access: Access, after: int, limit: int
) -> tuple[list[User], bool]:
    """A page of the users ``access`` reaches with ids above ``after``, and
    whether more remain."""
    return await keyset_page(session, User, User.id, after, limit, where=access.owned(User.id))
