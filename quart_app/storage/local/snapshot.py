"""Copies of this layout's blobs, out for a backup and in for a restore
(ops/backup.py, ops/restore.py).

Published blobs are immutable: a blob is written whole under tmp/, renamed
to its address, and from then on only renamed (to trash/ by a delete, back
by its rollback) or unlinked, never written to. So a hard link to one is a
copy no later upload, replace or delete can change, and making it costs one
directory entry: a backup pins the blobs its database copy refers to with
links in a directory under the storage root (the same filesystem) while
writers are held off, and copies them out afterwards, writers running.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

from quart_app.storage.local.disk import READ_CHUNK_BYTES, fsync_dir
from quart_app.storage.local.store import LocalBlobStore

PIN_PREFIX = "backup-"
STAGE_PREFIX = "restore-"


class BlobDamaged(Exception):
    """Bytes that are not what their address (sha256) and row (size) say."""


def work_dir(store: LocalBlobStore, prefix: str) -> Path:
    """A directory of this process's under the storage root: on the blobs'
    filesystem, outside every part of the layout that recovery and check scan."""
    path = store.root / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def remove_work_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def pin(
    store: LocalBlobStore, pins: Path, sha256s: Iterable[str], pinned: dict[str, int]
) -> set[str]:
    """Hard-link each blob at its address into ``pins`` (named by sha256),
    recording its inode in ``pinned``; returns those that were not there.

    A blob pinned earlier is only checked to be still the file at its
    address (one stat), and pinned again if not: a tus upload's blob
    published by a transaction that then failed goes back to being its
    partial file, which the next PATCH cuts and writes to. Once the row
    naming a blob is committed, its file is never written."""
    missing = set()
    for sha256 in sha256s:
        address, pin_path = store.path_for(sha256), pins / sha256
        try:
            inode = os.stat(address).st_ino
            if pinned.get(sha256) == inode:
                continue
            pin_path.unlink(missing_ok=True)
            os.link(address, pin_path)
            pinned[sha256] = os.stat(pin_path).st_ino
        except FileNotFoundError:
            missing.add(sha256)
    return missing


def copy_verified(source: Path, target: Path, sha256: str, size: int | None) -> None:
    """``target`` becomes a copy of ``source`` once the copy is fsynced and its
    sha256 (and size) checked: written under a temp name, renamed when
    right, so nothing half-written ever has a blob's name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    digest = hashlib.sha256()
    written = 0
    try:
        with source.open("rb") as reader, temp.open("xb") as writer:
            while chunk := reader.read(READ_CHUNK_BYTES):
                digest.update(chunk)
                writer.write(chunk)
                written += len(chunk)
            writer.flush()
            os.fsync(writer.fileno())
        if digest.hexdigest() != sha256 or (size is not None and written != size):
            raise BlobDamaged(
                f"{source}: {written} bytes with sha256 {digest.hexdigest()}, "
                f"not {sha256}" + ("" if size is None else f" ({size} bytes)")
            )
        os.rename(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def export(pinned: Path, target: Path, sha256: str) -> bool:
    """A pinned blob into a backup at ``target``: a hard link on the same
    filesystem (True), else a verified copy (False)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(pinned, target)
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        copy_verified(pinned, target, sha256, None)
        return False
    return True


def stage(source: Path, stage_dir: Path, sha256: str, size: int) -> None:
    """A backup's blob, copied under the storage root and verified, ready for
    :func:`publish_staged`."""
    copy_verified(source, stage_dir / sha256, sha256, size)


def publish_staged(store: LocalBlobStore, stage_dir: Path) -> int:
    """Move every staged blob to its address (renames, same filesystem)."""
    moved = 0
    parents: set[Path] = set()
    for staged in sorted(stage_dir.iterdir()):
        target = store.path_for(staged.name)
        parents.update(store.make_parents(target))
        os.rename(staged, target)
        parents.add(target.parent)
        moved += 1
    for directory in parents:
        fsync_dir(directory)
    return moved


def clear_layout(store: LocalBlobStore) -> None:
    """Empty blobs/, tmp/, trash/ and partial/ (a restore with --force)."""
    for directory in (store.blobs, store.tmp, store.trash, store.partial):
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(directory)
    store.prepare()


def holds_blobs(store: LocalBlobStore) -> bool:
    return store.blobs.is_dir() and any(p.is_file() for p in store.blobs.rglob("*"))
