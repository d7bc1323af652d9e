"""``python -m quart_app restore SRC [--force]``: a backup (ops/backup.py)
into the configured SQLite file and storage directory.

Everything is verified before anything of the instance is touched: the
database file against the manifest's sha256 and SQLite's own check, and
every blob file the database refers to against its sha256 and size while
it is copied under the storage root. Only then is the instance replaced:
the blobs renamed to their addresses, the database copied in and renamed
over the configured path. An instance that holds a database or blobs is
refused unless ``force`` (servers stopped: it is replaced whole).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

from quart_app.config import Settings
from quart_app.ops.backup import (
    DATABASE_NAME,
    FORMAT,
    MANIFEST_NAME,
    Failed,
    LocalInstance,
    Refused,
    file_blobs,
    fsync_file,
    local_instance,
    sha256_of,
)
from quart_app.ops.instance import SECRET_KEY_FILE
from quart_app.storage.local import LocalBlobStore
from quart_app.storage.local.disk import fsync_dir
from quart_app.storage.local.snapshot import (
    STAGE_PREFIX,
    BlobDamaged,
    clear_layout,
    holds_blobs,
    publish_staged,
    remove_work_dir,
    stage,
    work_dir,
)

SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def _manifest(src: Path) -> dict[str, object]:
    if not src.is_dir():
        raise Refused(f"{src} is not a directory")
    path = src / MANIFEST_NAME
    if not path.is_file():
        raise Refused(f"{src} holds no complete backup (no {MANIFEST_NAME})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise Refused(f"{path} cannot be read: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise Refused(f"{path}: not a backup of format {FORMAT}")
    return manifest


def _refuse_if_in_use(instance: LocalInstance, force: bool) -> None:
    held = [
        str(path)
        for path in (instance.database, *(_side(instance.database, s) for s in SQLITE_SIDE_FILES))
        if path.exists()
    ]
    if holds_blobs(instance.store):
        held.append(f"blobs in {instance.store.blobs}")
    if held and not force:
        raise Refused(
            f"the instance is not empty ({', '.join(held)}); restore replaces it whole: "
            "stop its servers and pass --force, or point QUART_APP_DATABASE_URL and "
            "QUART_APP_STORAGE_DIR at a new place"
        )


def _side(database: Path, suffix: str) -> Path:
    return database.with_name(database.name + suffix)


def _verify_database(src: Path, manifest: dict[str, object]) -> dict[str, int]:
    database = src / DATABASE_NAME
    expected = manifest.get("database")
    if not database.is_file() or not isinstance(expected, dict):
        raise Failed(f"{database} is missing")
    if sha256_of(database) != expected.get("sha256"):
        raise Failed(f"{database} does not match the sha256 in {MANIFEST_NAME}")
    # Read-only and immutable: the backup is never changed by reading it.
    uri = f"{database.resolve().as_uri()}?mode=ro&immutable=1"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        result = connection.execute("PRAGMA integrity_check").fetchone()[0]
        if result != "ok":
            raise Failed(f"{database} fails SQLite's integrity check: {result}")
        return file_blobs(connection)


def _stage_blobs(src: Path, blobs: dict[str, int], staged: Path) -> None:
    layout = LocalBlobStore(src, 1)
    for sha256, size in sorted(blobs.items()):
        source = layout.path_for(sha256)
        if not source.is_file():
            raise Failed(f"the backup lacks blob {sha256}, which its database refers to")
        try:
            stage(source, staged, sha256, size)
        except BlobDamaged as error:
            raise Failed(f"a damaged blob in the backup: {error}") from None


def _install_database(src: Path, database: Path) -> None:
    database.parent.mkdir(parents=True, exist_ok=True)
    temp = database.with_name(f".{database.name}.restore-part")
    shutil.copyfile(src / DATABASE_NAME, temp)
    fsync_file(temp)
    for suffix in SQLITE_SIDE_FILES:
        _side(database, suffix).unlink(missing_ok=True)
    os.rename(temp, database)
    fsync_dir(database.parent)


def restore(settings: Settings, src: Path, force: bool) -> str:
    """Restore the backup in ``src``; a summary line."""
    instance = local_instance(settings, "restore")
    manifest = _manifest(src)
    _refuse_if_in_use(instance, force)
    blobs = _verify_database(src, manifest)
    instance.store.prepare()
    staged = work_dir(instance.store, STAGE_PREFIX)
    try:
        _stage_blobs(src, blobs, staged)
        # Verified: from here on the instance is replaced.
        clear_layout(instance.store)
        moved = publish_staged(instance.store, staged)
    finally:
        remove_work_dir(staged)
    _install_database(src, instance.database)
    key = src / SECRET_KEY_FILE
    if instance.secret_key is not None and manifest.get("secret_key") and key.is_file():
        instance.secret_key.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(key, instance.secret_key)
        os.chmod(instance.secret_key, 0o600)
    return (
        f"restored {instance.database} and {moved} blob file(s) into {instance.store.root}, "
        "every sha256 verified"
    )
