"""Signed download links: a URL that serves one file's content without an
API key, until it expires or its owner revokes it.

The token is ``<link id>.<secret>``: the link's id (``dl_`` and 16 URL-safe
characters, 96 random bits; public, it names the link in lists, logs and
``DELETE``) and a secret of 43 URL-safe characters, 256 bits from
``secrets``, stored only as its sha256 (as API keys are). A download reads
the row by its id and compares the secret's hash with ``secrets.compare_digest``,
so the secret is never what a query searches for, and its check takes the
same time however much of it is right.

Random and hashed rather than an HMAC of the link's id under the server's
secret:

- a revocable link needs its row read on every download anyway, so a
  signature would save no query; the row's hash is the whole check;
- nothing to leak or rotate: a copy of the database gives no usable URL
  (only hashes), and neither ``SECRET_KEY`` nor its rotation (or workers
  that do not share ``instance/``) has any effect on links;
- 256 random bits cannot be guessed or forged, so a fast hash is enough.

The cost: the URL is shown once, in the answer that creates the link; the
list shows each link's id, which is the start of its URL (make a new link
if the URL is lost).

A link names the file's row, not its id, and serves what the row holds now
(like an S3 presigned URL serves the object's current version): after a PUT
replaces the file the link serves the new bytes under the new ETag, so
If-None-Match and If-Range stay exact. Deleting the file deletes its links
(ON DELETE CASCADE); a file made later under the same id is a new row that
no old link reaches.

Every refusal (malformed, unknown, tampered, expired, revoked, file gone)
is the same LinkRefused, word for word: a link tells whoever holds it
nothing but the content it grants.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from quart_app.db.engine import Database
from quart_app.db.models import DownloadLink, File, utc_now
from quart_app.errors import Conflict, LinkRefused, NotFound
from quart_app.services.accounts import Access
from quart_app.services.files import get_file

LINK_ID_PREFIX = "dl_"  # recognisable, for people and secret scanners
LINK_ID_CHARS = len(LINK_ID_PREFIX) + 16
TOKEN_PATTERN = re.compile(r"(dl_[A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{43})")
# Live (unexpired, unrevoked) links one file may have: rows stay until they
# expire, so this bounds what a key can make the database hold.
MAX_LIVE_LINKS_PER_FILE = 100
REFUSAL = "This download link is not valid: it may have expired or been revoked."


def new_link_id() -> str:
    return LINK_ID_PREFIX + secrets.token_urlsafe(12)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def link_token(link_id: str, secret: str) -> str:
    """What the link's URL carries."""
    return f"{link_id}.{secret}"


async def create_link(
    session: AsyncSession, access: Access, file_id: str, lifetime: timedelta
) -> tuple[DownloadLink, File, str]:
    """A new link to the file ``access`` reaches as ``file_id`` (NotFound as
    for any other request); the token is returned once, never stored."""
    file = await get_file(session, access, file_id)
    now = utc_now()
    live = await session.scalar(
        select(func.count())
        .select_from(DownloadLink)
        .where(
            DownloadLink.file_seq == file.seq,
            DownloadLink.revoked_at.is_(None),
            DownloadLink.expires_at > now,
        )
    )
    if (live or 0) >= MAX_LIVE_LINKS_PER_FILE:
        raise Conflict(
            f"A file has at most {MAX_LIVE_LINKS_PER_FILE} live links; revoke one first."
        )
    secret = secrets.token_urlsafe(32)
    link = DownloadLink(
        id=new_link_id(),
        file_seq=file.seq,
        secret_hash=secret_hash(secret),
        created_at=now,
        expires_at=now + lifetime,
    )
    session.add(link)
    await session.flush()
    return link, file, link_token(link.id, secret)


async def list_links(
    session: AsyncSession, access: Access, file_id: str
) -> tuple[File, list[DownloadLink]]:
    """The file's links not yet swept (revoked and expired ones included)."""
    file = await get_file(session, access, file_id)
    links = await session.scalars(
        select(DownloadLink)
        .where(DownloadLink.file_seq == file.seq)
        .order_by(DownloadLink.created_at, DownloadLink.id)
    )
    return file, list(links)


async def revoke_link(session: AsyncSession, access: Access, file_id: str, link_id: str) -> None:
    """Revoke the link; revoking it again changes nothing. NotFound when the
    file is not ``access``'s or the link is not the file's."""
    file = await get_file(session, access, file_id)
    link = await session.scalar(
        select(DownloadLink).where(DownloadLink.id == link_id, DownloadLink.file_seq == file.seq)
    )
    if link is None:
        raise NotFound(f"There is no link {link_id}.")
    if link.revoked_at is None:
        link.revoked_at = utc_now()
        await session.flush()


async def linked_file(
    session: AsyncSession, token: str, now: datetime
) -> tuple[DownloadLink, File]:
    """The link with this token and its file, if the link is live; else
    LinkRefused, the same for every reason."""
    parts = TOKEN_PATTERN.fullmatch(token)
    if parts is None:
        raise LinkRefused(REFUSAL)
    link_id, secret = parts.groups()
    found = (
        await session.execute(
            select(DownloadLink, File)
            .join(File, File.seq == DownloadLink.file_seq)
            .where(DownloadLink.id == link_id)
        )
    ).one_or_none()
    if found is None:
        raise LinkRefused(REFUSAL)
    link, file = found
    if not secrets.compare_digest(link.secret_hash, secret_hash(secret)):
        raise LinkRefused(REFUSAL)
    if link.revoked_at is not None or link.expires_at <= now:
        raise LinkRefused(REFUSAL)
    return link, file


async def sweep_expired_links(database: Database, now: datetime) -> int:
    """Delete the links past their expiry (revoked or not); how many."""
    async with database.sessionmaker() as session, database.writing(session):
        result = await session.execute(delete(DownloadLink).where(DownloadLink.expires_at <= now))
    return int(getattr(result, "rowcount", 0) or 0)
