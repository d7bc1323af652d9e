"""Accounts: who is asking, and their API keys.

A key is ``qa_`` and 43 URL-safe characters (256 random bits). The prefix
lets secret scanners and people recognise a leaked key; the database keeps
only the key's sha256 and its first characters (``prefix``). The secret has
far more entropy than a password, so a fast hash is enough: nobody can
guess their way back from the hash.

Users are the accounts. One documented system account, the operator (user
0, ``operator@quart-app.invalid``), owns what existed before accounts and
what the environment's admin key (``QUART_APP_ADMIN_KEY``) creates. Its id
is below every user's, so user lists (which start above 0) leave it out.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from quart_app.db.models import ApiKey, User, utc_now
from quart_app.errors import Conflict, InsufficientScope, InvalidInput, NotFound

KEY_PREFIX = "qa_"
KEY_PATTERN = re.compile(r"qa_[A-Za-z0-9_-]{43}")
SHOWN_PREFIX_CHARS = 10  # "qa_" and 7 more: enough to tell keys apart in a list
SCOPES = ("read", "write", "admin")
DEFAULT_SCOPES = ("read", "write")
MAX_KEYS_PER_USER = 100
OPERATOR_ID = 0  # below every id a user is given, so it takes none of theirs
OPERATOR_EMAIL = "operator@quart-app.invalid"
OPERATOR_NAME = "Operator"
ENVIRONMENT_KEY_ID = "environment"


@dataclass(frozen=True)
class Access:
    """Who is asking: the account whose resources they reach (and which owns
    what they create), the key they used, what it allows and when it expires
    (None: never). ``admin`` reaches every account's resources."""

    user_id: int
    key_id: str
    scopes: frozenset[str]
    expires_at: datetime | None = None

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def allows(self, scope: str) -> bool:
        return self.admin or scope in self.scopes

    def owns(self, owner_id: int) -> bool:
        return self.admin or owner_id == self.user_id

    def owned(self, column: Any) -> ColumnElement[bool]:
        """A WHERE clause keeping only the rows this access may reach."""
        if self.admin:
            return true()
        clause: ColumnElement[bool] = column == self.user_id
        return clause

    @property
    def idempotency_owner(self) -> str:
        return str(self.user_id)


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def looks_like_key(text: str) -> bool:
    return KEY_PATTERN.fullmatch(text) is not None


def parse_scopes(scopes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Known scopes, deduplicated, in canonical order."""
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in scopes)


async def create_key(
    session: AsyncSession,
    user_id: int,
    scopes: tuple[str, ...],
    expires_at: datetime | None,
    granted_by: Access | None = None,
) -> tuple[ApiKey, str]:
    """A new key for ``user_id``; the secret is returned once, never stored.
    ``granted_by`` (None: the operator's command line, a sign-up) may not
    give scopes it does not hold itself, nor outlive itself."""
    if granted_by is not None and not all(granted_by.allows(s) for s in scopes):
        raise InsufficientScope(
            "A key cannot create a key with scopes it does not have itself.",
            scope=" ".join(scopes),
        )
    if granted_by is not None and granted_by.expires_at is not None:
        # Else a key about to expire could make itself a successor that never does.
        left = int((granted_by.expires_at - utc_now()).total_seconds())
        if expires_at is None or expires_at > granted_by.expires_at:
            raise InvalidInput(
                "A key that expires cannot create a key that outlives it: "
                f"give expires_in of at most {left} seconds.",
                errors=[{"field": "expires_in", "message": "outlives the key creating it"}],
            )
    live = await session.scalars(
        select(ApiKey.id).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
    )
    if len(list(live)) >= MAX_KEYS_PER_USER:
        raise Conflict(f"A user has at most {MAX_KEYS_PER_USER} keys; revoke one first.")
    secret = new_secret()
    key = ApiKey(
        id="key_" + secrets.token_urlsafe(12),
        user_id=user_id,
        prefix=secret[:SHOWN_PREFIX_CHARS],
        secret_hash=secret_hash(secret),
        scopes=" ".join(scopes),
        created_at=utc_now(),
        expires_at=expires_at,
    )
    session.add(key)
    await session.flush()
    return key, secret


async def find_key(session: AsyncSession, secret: str) -> ApiKey | None:
    """The key with this secret, live or not (the caller checks)."""
    key = await session.scalar(select(ApiKey).where(ApiKey.secret_hash == secret_hash(secret)))
    if key is None or not secrets.compare_digest(key.secret_hash, secret_hash(secret)):
        return None
    return key


def key_is_live(key: ApiKey, now: datetime) -> bool:
    return key.revoked_at is None and (key.expires_at is None or key.expires_at > now)


async def list_keys(session: AsyncSession, user_id: int) -> list[ApiKey]:
    return list(
        await session.scalars(
            select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at, ApiKey.id)
        )
    )


async def get_key(session: AsyncSession, user_id: int, key_id: str) -> ApiKey:
    key = await session.scalar(select(ApiKey).where(ApiKey.user_id == user_id, ApiKey.id == key_id))
    if key is None:
        raise NotFound("There is no such key.")
    return key


async def revoke_key(session: AsyncSession, user_id: int, key_id: str) -> None:
    key = await get_key(session, user_id, key_id)
    if key.revoked_at is None:
        key.revoked_at = utc_now()
        await session.flush()


async def record_last_used(session: AsyncSession, used: dict[str, datetime]) -> None:
    """Write when keys were last used (a batch, not a write per request)."""
    for key_id, when in used.items():
        await session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id)
            .where((ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < when))
            .values(last_used_at=when)
        )


async def operator_id(session: AsyncSession) -> int:
    """The operator account's id, created on first use."""
    found = await session.scalar(select(User.id).where(User.email == OPERATOR_EMAIL))
    if found is not None:
        return found
    user = User(id=OPERATOR_ID, name=OPERATOR_NAME, email=OPERATOR_EMAIL, created_at=utc_now())
    try:
        async with session.begin_nested():
            session.add(user)
    except IntegrityError:  # another process made it first
        made = await session.scalar(select(User.id).where(User.email == OPERATOR_EMAIL))
        assert made is not None
        return made
    return user.id
