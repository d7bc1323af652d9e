"""Idempotency records: claim a key, complete it with the response inside the
transaction that creates the resource, release it when nothing was created.

Why this shape: the record and the resource must commit together, so a crash
can never leave one without the other. So a request first *claims* the key
(its own short transaction, which makes a concurrent twin see 409), and the
creating transaction itself turns the claim into a completed record by
compare-and-set on the claim's token. If the creating transaction rolls
back, so does the completion; the claim is then released. A claim whose
holder died (crash, kill -9) lapses at ``locked_until`` and may be taken over.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from quart_app.db.engine import Database
from quart_app.db.models import IdempotencyRecord, utc_now
from quart_app.errors import Conflict


@dataclass(frozen=True)
class StoredResponse:
    fingerprint: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class Claim:
    owner: str
    key: str
    token: str


class KeyInUse(Exception):
    """Another request with this key is still running."""


class KeyCompleted(Exception):
    """The key already has a stored response."""

    def __init__(self, stored: StoredResponse) -> None:
        super().__init__("completed")
        self.stored = stored


def _stored(record: IdempotencyRecord) -> StoredResponse:
    assert record.fingerprint is not None and record.status is not None
    return StoredResponse(
        fingerprint=record.fingerprint,
        status=record.status,
        headers=[(name, value) for name, value in json.loads(record.headers or "[]")],
        body=record.body or b"",
    )


async def claim(database: Database, owner: str, key: str, lease: timedelta) -> Claim:
    """Claim ``key`` for this request. Raises KeyCompleted (replay or 422)
    or KeyInUse (409)."""
    token = secrets.token_hex(16)
    now = utc_now()
    async with database.sessionmaker() as session, database.writing(session):
        # FOR UPDATE (PostgreSQL; SQLite's writer excludes all others): two
        # servers taking over one lapsed claim would both think they hold it.
        # A row not there yet is settled by the primary key instead.
        record = await session.get(IdempotencyRecord, (owner, key), with_for_update=True)
        if record is None:
            session.add(
                IdempotencyRecord(
                    owner=owner, key=key, lock_token=token, locked_until=now + lease, created_at=now
                )
            )
            try:
                await session.flush()
            except IntegrityError:
                raise KeyInUse(key) from None
            return Claim(owner, key, token)
        if record.completed_at is not None:
            raise KeyCompleted(_stored(record))
        if record.locked_until is not None and record.locked_until > now:
            raise KeyInUse(key)
        record.lock_token = token  # the previous holder's lease ran out
        record.locked_until = now + lease
        return Claim(owner, key, token)


async def complete(session: AsyncSession, claim: Claim, response: StoredResponse) -> None:
    """Store the response; call inside the transaction that creates the
    resource, so both commit or neither does."""
    result = await session.execute(
        update(IdempotencyRecord)
        .where(
            IdempotencyRecord.owner == claim.owner,
            IdempotencyRecord.key == claim.key,
            IdempotencyRecord.lock_token == claim.token,
        )
        .values(
            fingerprint=response.fingerprint,
            status=response.status,
            headers=json.dumps(response.headers),
            body=response.body,
            completed_at=utc_now(),
            lock_token=None,
            locked_until=None,
        )
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 1) != 1:
        raise Conflict("This request held its Idempotency-Key too long and lost it; retry.")


async def release(database: Database, claim: Claim) -> None:
    """Forget a claim whose request created nothing, so the key can be reused."""
    async with database.sessionmaker() as session, database.writing(session):
        await session.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.owner == claim.owner,
                IdempotencyRecord.key == claim.key,
                IdempotencyRecord.lock_token == claim.token,
                IdempotencyRecord.completed_at.is_(None),
            )
        )


async def purge_expired(database: Database, older_than: datetime) -> int:
    """Delete records created before ``older_than``; returns how many."""
    async with database.sessionmaker() as session, database.writing(session):
        result = await session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.created_at < older_than)
        )
    return int(getattr(result, "rowcount", 0) or 0)
