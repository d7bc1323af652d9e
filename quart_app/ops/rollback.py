"""``python -m quart_app migrate --to REVISION``: move the schema to any
revision, down as well as up (README "Upgrades and rollback").

A downgrade runs each migration's own ``downgrade()``. Some older schemas
cannot hold what newer ones keep, and their downgrade refuses while it is
there; what can be moved somewhere the older release reads is moved first,
here, where the store is at hand (a migration knows only the database):

- ``0009_inline_blobs``: blobs kept in their rows become blob files, as
  the release before it stored every blob.
"""

from __future__ import annotations

import dataclasses

from alembic.util.exc import CommandError
from sqlalchemy import select, update

from quart_app.config import Settings
from quart_app.db.engine import Database
from quart_app.db.migrate import migrate_to, revisions, revisions_undone
from quart_app.db.models import Blob
from quart_app.db.schema_version import schema_revision
from quart_app.ops.accounts import CommandFailed
from quart_app.services.files import blob_transaction
from quart_app.storage import BlobStore
from quart_app.storage.factory import build_store

INLINE_BLOBS_REVISION = "0009_inline_blobs"


async def move_inline_blobs(database: Database, store: BlobStore) -> int:
    """Every blob kept in its row written to the store (``store`` keeps no
    blob inline), its row's copy dropped in the transaction that publishes
    it; how many. One blob at a time: never all their bytes in memory."""
    moved = 0
    while True:
        async with database.sessionmaker() as session:
            found = (
                await session.execute(
                    select(Blob.sha256, Blob.content).where(Blob.content.is_not(None)).limit(1)
                )
            ).first()
        if found is None:
            return moved
        sha256, content = found.sha256, found.content
        assert content is not None
        writer = store.writer(len(content))
        try:
            await writer.write(content)
            sealed = await writer.seal()
            assert sealed.content is None and sealed.sha256 == sha256, "not written to the store"
            async with blob_transaction(database, store) as (session, changes):
                await changes.lock(session, [sha256])
                if await writer.publish():
                    changes.on_undo(writer.unpublish, publish=True)
                    changes.after_commit(writer.settle)
                await session.execute(
                    update(Blob).where(Blob.sha256 == sha256).values(content=None)
                )
        finally:
            await writer.discard()
        moved += 1


async def migrate_to_revision(settings: Settings, database: Database, target: str) -> str:
    """Upgrade or downgrade to ``target``, moving first what a downgrade
    would otherwise refuse; a summary line."""
    current = await schema_revision(database.engine)
    try:
        undone = revisions_undone(settings, current, target)
    except CommandError as error:
        raise CommandFailed(f"{error} (`python -m quart_app migrate --list` lists them)") from None
    lines = []
    if INLINE_BLOBS_REVISION in undone:
        store = build_store(dataclasses.replace(settings, INLINE_BLOB_BYTES=0))
        try:
            moved = await move_inline_blobs(database, store)
        finally:
            await store.close()
        lines.append(f"{moved} blob(s) moved from their rows to {store.describe()}")
    try:
        await migrate_to(database.engine, settings, target)
    except RuntimeError as error:  # a downgrade() refusing
        raise CommandFailed(f"{error}; the schema stays at {current}") from None
    lines.append(f"database at {await schema_revision(database.engine) or 'base'} (was {current})")
    return "\n".join(lines)


async def list_revisions(settings: Settings, database: Database) -> str:
    """Every revision, oldest first, the database's marked."""
    current = await schema_revision(database.engine)
    return "\n".join(
        f"{'*' if revision == current else ' '} {revision}" for revision in revisions(settings)
    )
