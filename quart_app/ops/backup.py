"""``python -m quart_app backup DEST``: a consistent copy of a running SQLite
instance (README "Backup and restore"); ``restore`` is ops/restore.py.

The copy is the database as of one moment, and every blob file it refers
to. Blobs kept in their rows (``QUART_APP_INLINE_BLOB_BYTES``) come with
the database. The moment is one at which this command holds SQLite's write
lock (BEGIN IMMEDIATE): no upload, replace or delete, in any process, is
then half-way between its blob and its row, so each blob a committed row
refers to is at its address. Under the lock a read transaction begins (the
snapshot the copy is made from) and the blobs it refers to are pinned by
hard links (storage/local/snapshot.py); most were pinned before the lock and
are only checked (a stat each), so it is held for one query and a few
microseconds per blob. Then, writers running again, the
snapshot is copied by SQLite's online backup API (in WAL mode a reader's
snapshot stays whole whatever is written meanwhile) and the pinned blobs are
linked or copied into DEST.

DEST::

    quart_app.sqlite3      the database (journal mode DELETE: one file)
    blobs/ab/cd/<sha256>   the blob files it refers to, the storage's layout
    secret_key             the instance's generated secret key, if it has one
    MANIFEST.json          written last: a DEST without it is incomplete

Resumable uploads still in progress are left out (their rows are deleted
from the copy): their partial bytes are not immutable, and a tus client
told 404 starts again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from quart_app.config import Settings
from quart_app.db.engine import sqlite_path
from quart_app.ops.instance import SECRET_KEY_FILE
from quart_app.ops.startup import describe_database
from quart_app.storage.local import LocalBlobStore
from quart_app.storage.local.disk import READ_CHUNK_BYTES, fsync_dir
from quart_app.storage.local.snapshot import (
    PIN_PREFIX,
    export,
    pin,
    remove_work_dir,
    work_dir,
)

DATABASE_NAME = "quart_app.sqlite3"
MANIFEST_NAME = "MANIFEST.json"
FORMAT = 1
# How long backup waits for SQLite's write lock (a long import may hold it).
LOCK_WAIT_SECONDS = 60.0
DOC = 'README "Backup and restore"'


class Refused(Exception):
    """The command will not run as asked (exit status 2): nothing was changed."""


class Failed(Exception):
    """The command ran and found something wrong (exit status 1)."""


@dataclass(frozen=True)
class LocalInstance:
    database: Path
    store: LocalBlobStore
    secret_key: Path | None  # None: QUART_APP_SECRET_KEY is set


def local_instance(settings: Settings, command: str) -> LocalInstance:
    """The SQLite file and storage directory the settings name; other
    databases and stores have their own tools (README)."""
    database = sqlite_path(settings.database_url)
    if database is None:
        raise Refused(
            f"{command} copies an SQLite file; the database is "
            f"{describe_database(settings.database_url)}: use pg_dump / pg_restore "
            f"and copy the bucket ({DOC})"
        )
    if settings.STORAGE_URL:
        raise Refused(
            f"{command} copies a storage directory; the storage is {settings.STORAGE_URL}: "
            f"copy the bucket alongside the database ({DOC})"
        )
    store = LocalBlobStore(settings.STORAGE_DIR, settings.WRITE_BATCH_BYTES)
    secret_key = None if settings.SECRET_KEY else settings.INSTANCE_DIR / SECRET_KEY_FILE
    return LocalInstance(database, store, secret_key)


def connect(path: Path, timeout: float = LOCK_WAIT_SECONDS) -> sqlite3.Connection:
    """An existing database file (never creates one), autocommit."""
    uri = f"{path.resolve().as_uri()}?mode=rw"  # as_uri: a ? or # in the path is escaped
    return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)


def file_blobs(connection: sqlite3.Connection) -> dict[str, int]:
    """sha256 -> size of every blob whose bytes are in a file (not its row;
    before migration 0009 every blob is a file)."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(blobs)")}
    where = " WHERE content IS NULL" if "content" in columns else ""
    rows = connection.execute(f"SELECT sha256, size FROM blobs{where}")
    return {sha256: size for sha256, size in rows}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prepare_dest(dest: Path, instance: LocalInstance) -> None:
    storage = instance.store.root.resolve()
    resolved = dest.resolve()
    if resolved == storage or resolved.is_relative_to(storage):
        raise Refused(f"{dest} is inside the storage directory {storage}; choose another place")
    if dest.exists() and not dest.is_dir():
        raise Refused(f"{dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()):
        raise Refused(f"{dest} is not empty; give a new or empty directory")
    if not dest.parent.is_dir():
        raise Refused(f"{dest}: its parent directory {dest.parent} does not exist")
    try:
        dest.mkdir(exist_ok=True)
        probe = dest / ".probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise Refused(f"{dest}: cannot write there: {error.strerror}") from None


@contextlib.contextmanager
def writers_held(database: Path) -> Iterator[None]:
    """SQLite's write lock, held: no write transaction, in any process,
    runs (or is half-way) meanwhile."""
    with contextlib.closing(connect(database)) as lock:
        try:
            lock.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise Failed(f"could not take the database's write lock: {error}") from None
        try:
            yield
        finally:
            lock.execute("ROLLBACK")


def _copy_database(instance: LocalInstance, copy: Path, pins: Path) -> dict[str, int]:
    """The database copied into ``copy`` from a snapshot begun, and the blobs
    it refers to pinned, under the write lock; returns those blobs."""
    with contextlib.closing(connect(instance.database)) as source:
        # Pinned before the lock, so that under it only the blobs of the
        # last moments are left to link.
        pinned: dict[str, int] = {}
        pin(instance.store, pins, file_blobs(source), pinned)
        with writers_held(instance.database):
            source.execute("BEGIN")
            blobs = file_blobs(source)  # the first read: the snapshot is taken here
            missing = pin(instance.store, pins, blobs, pinned)
        if missing:
            source.execute("ROLLBACK")
            raise Failed(
                f"{len(missing)} blob(s) the database refers to are missing from "
                f"{instance.store.root} (run `python -m quart_app check`): "
                + ", ".join(sorted(missing)[:5])
            )
        with contextlib.closing(sqlite3.connect(copy, isolation_level=None)) as target:
            # From the open read transaction: its snapshot, not what writers
            # have committed since (and never from the lock's connection: a
            # backup from inside a write transaction never finishes).
            source.backup(target)
            source.execute("COMMIT")
            assert file_blobs(target) == blobs, "the copy is not the snapshot"
            tables = {row[0] for row in target.execute("SELECT name FROM sqlite_master")}
            if "uploads" in tables:
                target.execute("DELETE FROM uploads WHERE completed_at IS NULL")
            target.execute("PRAGMA journal_mode=DELETE")
    for extra in set(os.listdir(pins)) - set(blobs):
        (pins / extra).unlink()
    return blobs


def backup(settings: Settings, dest: Path) -> str:
    """Copy the instance into ``dest`` (new or empty); a summary line."""
    instance = local_instance(settings, "backup")
    if not instance.database.is_file():
        raise Refused(f"no database at {instance.database}")
    _prepare_dest(dest, instance)
    pins = work_dir(instance.store, PIN_PREFIX)
    try:
        copy = dest / f".{DATABASE_NAME}.part"
        blobs = _copy_database(instance, copy, pins)
        fsync_file(copy)
        os.rename(copy, dest / DATABASE_NAME)
        layout = LocalBlobStore(dest, settings.WRITE_BATCH_BYTES)
        linked = sum(export(pins / sha, layout.path_for(sha), sha) for sha in sorted(blobs))
    finally:
        remove_work_dir(pins)
    has_key = instance.secret_key is not None and instance.secret_key.is_file()
    if has_key and instance.secret_key is not None:
        shutil.copyfile(instance.secret_key, dest / SECRET_KEY_FILE)
        os.chmod(dest / SECRET_KEY_FILE, 0o600)
    manifest = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": {"name": DATABASE_NAME, "sha256": sha256_of(dest / DATABASE_NAME)},
        "blob_files": len(blobs),
        "secret_key": has_key,
    }
    _write_manifest(dest, manifest)
    how = "hard-linked" if linked == len(blobs) else f"{linked} hard-linked, rest copied"
    return f"backup in {dest}: database and {len(blobs)} blob file(s) ({how})"


def _write_manifest(dest: Path, manifest: dict[str, object]) -> None:
    temp = dest / f".{MANIFEST_NAME}.part"
    temp.write_text(json.dumps(manifest, indent=2) + "\n")
    fsync_file(temp)
    os.rename(temp, dest / MANIFEST_NAME)
    fsync_dir(dest)
