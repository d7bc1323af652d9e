"""Signed download links: a URL that serves one file's content without an
API key, until it expires or its owner revokes it.

The token: ``dl_`` and 43 URL-safe characters, 256 bits from ``secrets``,
stored only as its sha256 (the way API keys are), rather than an HMAC of
the link's id under the server's secret:

- a revocable link needs a row looked up on every download anyway, so a
  signature would save no query; the row's hash is the whole check;
- nothing to leak or rotate: a copy of the database gives no usable URL
  (only hashes), and neither ``SECRET_KEY`` nor its rotation (or workers
  that do not share ``instance/``) has any effect on links;
- 256 random bits cannot be guessed or forged, so a fast hash is enough, and
  a flipped character is simply an unknown token.

The cost: the URL is shown once, in the answer that creates the link; the
list shows each link's prefix, not its URL (make a new link instead).

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

TOKEN_PREFIX = "dl_"
TOKEN_PATTERN = re.compile(r"dl_[A-Za-z0-9_-]{43}")
SHOWN_PREFIX_CHARS = 10  # "dl_" and 7 more: enough to tell links apart
# Live (unexpired, unrevoked) links one file may have: rows stay until they
# expire, so this bounds what a key can make the database hold.
MAX_LIVE_LINKS_PER_FILE = 100
REFUSAL = "This download link is not valid: it may have expired or been revoked."


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def shown_prefix(text: str) -> str:
    """The part of a token (or of anything in its place) that may be shown."""
    return text[:SHOWN_PREFIX_CHARS]


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
    token = new_token()
    link = DownloadLink(
        id="lnk_" + secrets.token_urlsafe(12),
        file_seq=file.seq,
        token_hash=token_hash(token),
        prefix=shown_prefix(token),
        created_at=now,
        expires_at=now + lifetime,
    )
    session.add(link)
    await session.flush()
    return link, file, token


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
    if TOKEN_PATTERN.fullmatch(token) is None:
        raise LinkRefused(REFUSAL)
    digest = token_hash(token)
    found = (
        await session.execute(
            select(DownloadLink, File)
            .join(File, File.seq == DownloadLink.file_seq)
            .where(DownloadLink.token_hash == digest)
        )
    ).one_or_none()
    if found is None:
        raise LinkRefused(REFUSAL)
    link, file = found
    # The index found the row by equality; the comparison that decides is
    # constant-time, as for API keys.
    if not secrets.compare_digest(link.token_hash, digest):
        raise LinkRefused(REFUSAL)
    if link.revoked_at is not None or link.expires_at <= now:
        raise LinkRefused(REFUSAL)
    return link, file


async def sweep_expired_links(database: Database, now: datetime) -> int:
    """Delete the links past their expiry (revoked or not); how many."""
    async with database.sessionmaker() as session, database.writing(session):
        result = await session.execute(delete(DownloadLink).where(DownloadLink.expires_at <= now))
    return int(getattr(result, "rowcount", 0) or 0)
