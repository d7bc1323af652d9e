"""Crash recovery of the local layout (run at startup by ops/integrity.recover).

What a crash can leave, and what undoes it:

- ``trash/<sha256>.<token>``: a blob retired inside a transaction. If the
  process died before that transaction committed, the database rolled the
  rows back and the blob row still stands: the bytes must go back to their
  address. If it committed, the bytes are garbage. Recovery decides by the
  blob row, so it is right either way.
- ``tmp/<pid>-*.part``: an upload in flight. Removed when its process is
  gone, or when older than the longest a body may take (BODY_DEADLINE), so
  a cleanup never touches another live worker's upload.
- a published blob without its row (died between rename and commit): the
  ``tmp/<pid>-publishing-<sha256>`` marker left with it names it, so the
  bytes are removed at startup if no row has that sha256.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from quart_app.storage import HasRow

if TYPE_CHECKING:
    from quart_app.storage.local.store import LocalBlobStore


def stale(path: Path, older_than: float) -> bool:
    try:
        return path.stat().st_mtime < time.time() - older_than
    except FileNotFoundError:
        return False


def _owner_gone(path: Path) -> bool:
    """A temp file named ``<pid>-...`` whose process no longer exists."""
    pid = path.name.split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def abandoned(path: Path, older_than: float) -> bool:
    return _owner_gone(path) or stale(path, older_than)


async def settle_leftovers(
    store: LocalBlobStore, temp_max_age: float, has_row: HasRow
) -> list[str]:
    """Trash back to its address or purged, and blobs published without a
    committed row removed, deciding by ``has_row`` (call it inside a write
    transaction, so that no writer is half-way through one)."""
    done: list[str] = []
    for path in sorted(store.trash.iterdir()):
        sha256 = path.name.split(".", 1)[0]
        target = store.path_for(sha256) if len(sha256) == 64 else None
        if target is not None and await has_row(sha256) and not target.exists():
            await asyncio.to_thread(store.make_parents, target)
            await asyncio.to_thread(os.rename, path, target)
            done.append(f"restored blob {sha256} from trash (its transaction never committed)")
        else:
            await asyncio.to_thread(path.unlink, True)
            done.append(f"purged trash {path.name}")
    for marker in sorted(store.tmp.glob("*-publishing-*")):
        if not abandoned(marker, temp_max_age):
            continue  # its transaction may still be running
        sha256 = marker.name.rsplit("-", 1)[1]
        if len(sha256) == 64 and not await has_row(sha256):
            await asyncio.to_thread(store.path_for(sha256).unlink, True)
            done.append(f"removed blob {sha256}: published, but its row never committed")
        await asyncio.to_thread(marker.unlink, True)
    return done


async def remove_abandoned_temp_files(store: LocalBlobStore, temp_max_age: float) -> list[str]:
    done: list[str] = []
    for path in sorted(store.tmp.iterdir()):
        if abandoned(path, temp_max_age):
            await asyncio.to_thread(path.unlink, True)
            done.append(f"removed abandoned temp file {path.name}")
    return done
