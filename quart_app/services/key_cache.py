"""What a worker knows about API keys, for at most ``ttl`` seconds.

Every request names a key; reading its row each time would put a database
read on every request. A live key found in the database is trusted for
``ttl`` seconds (``QUART_APP_KEY_CACHE_SECONDS``), then read again: a key
revoked or expired stops working on every worker within that time. Unknown
keys are never cached (a client sending random keys cannot fill the cache;
the edge's failure limit bounds how often they are looked up).

When a key was last used is noted in memory and written in one batch by the
background sweep, not by a write per request.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from sqlalchemy import select

from quart_app.db.engine import Database
from quart_app.db.models import User, utc_now
from quart_app.services.accounts import (
    ENVIRONMENT_KEY_ID,
    OPERATOR_EMAIL,
    SCOPES,
    Access,
    find_key,
    key_is_live,
    looks_like_key,
    operator_id,
    record_last_used,
    secret_hash,
)
from quart_app.services.single_flight import SingleFlight

MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class _Entry:
    access: Access
    expires_at: datetime | None
    checked: float


class KeyCache:
    def __init__(self, database: Database, ttl: float, admin_key: str = "") -> None:
        self._database = database
        self._ttl = ttl
        self._admin_hash = secret_hash(admin_key) if admin_key else None
        self._operator: int | None = None
        self._entries: dict[str, _Entry] = {}
        # key id -> time.time() of its last use: a float, as this is noted
        # on every request and made a datetime only when written.
        self._used: dict[str, float] = {}
        self._flights: SingleFlight[str, Access | None] = SingleFlight()

    async def start(self) -> None:
        """Make the operator account now, when the environment has an admin
        key: made on its first use instead, it would need the write lock in
        the middle of a request (which waits behind whatever holds it)."""
        if self._admin_hash is not None:
            await self._operator_id()

    def known(self, secret: str) -> Access | None:
        """The access of the environment's admin key, or of a live key read
        from the database less than ``ttl`` seconds ago; None when it must be
        looked up (or is not live)."""
        hashed = secret_hash(secret)
        if self._operator is not None and self._is_admin_key(hashed):
            return Access(self._operator, ENVIRONMENT_KEY_ID, frozenset(SCOPES))
        entry = self._entries.get(hashed)
        if entry is None or time.monotonic() - entry.checked >= self._ttl:
            return None
        if entry.expires_at is not None and entry.expires_at <= utc_now():
            return None
        return entry.access

    async def lookup(self, secret: str) -> Access | None:
        """The access this secret grants, or None (unknown, revoked, expired)."""
        hashed = secret_hash(secret)
        if self._is_admin_key(hashed):
            return Access(await self._operator_id(), ENVIRONMENT_KEY_ID, frozenset(SCOPES))
        if not looks_like_key(secret):
            return None
        known = self.known(secret)
        if known is not None:
            return known
        # One read per key at a time: the requests in flight when its entry
        # lapses wait for it instead of each reading (single_flight.py).
        return await self._flights.run(hashed, partial(self._read, secret, hashed))

    async def _read(self, secret: str, hashed: str) -> Access | None:
        async with self._database.sessionmaker() as session:
            key = await find_key(session, secret)
        if key is None or not key_is_live(key, utc_now()):
            self._entries.pop(hashed, None)
            return None
        access = Access(key.user_id, key.id, frozenset(key.scopes.split()), key.expires_at)
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[hashed] = _Entry(access, key.expires_at, time.monotonic())
        return access

    def _is_admin_key(self, hashed: str) -> bool:
        return self._admin_hash is not None and secrets.compare_digest(hashed, self._admin_hash)

    def note_use(self, access: Access) -> None:
        if access.key_id != ENVIRONMENT_KEY_ID:
            self._used[access.key_id] = time.time()

    async def flush_used(self) -> int:
        """Write the last-use times noted since the last flush."""
        used, self._used = self._used, {}
        if not used:
            return 0
        times = {
            key_id: datetime.fromtimestamp(when, UTC).replace(microsecond=0)
            for key_id, when in used.items()
        }
        try:
            async with self._database.sessionmaker() as session, self._database.writing(session):
                await record_last_used(session, times)
        except BaseException:
            for key_id, when in used.items():
                self._used.setdefault(key_id, when)
            raise
        return len(used)

    async def _operator_id(self) -> int:
        if self._operator is None:
            async with self._database.sessionmaker() as session:
                found = await session.scalar(select(User.id).where(User.email == OPERATOR_EMAIL))
            if found is not None:
                self._operator = found
                return found
            async with self._database.sessionmaker() as session, self._database.writing(session):
                self._operator = await operator_id(session)
        return self._operator
