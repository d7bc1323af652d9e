"""What a server needs on disk before it serves: the storage and instance
directories, and (when none is configured) a persistent secret key, so that
cursors stay valid across restarts and between workers."""

from __future__ import annotations

import contextlib
import os
import secrets

from quart_app.config import Settings

SECRET_KEY_FILE = "secret_key"


def prepare_directories(settings: Settings) -> None:
    """The storage and instance directories (the database's own directory is
    made with it: Database.create_file)."""
    settings.STORAGE_DIR.mkdir(parents=True, exist_ok=True)
    settings.INSTANCE_DIR.mkdir(parents=True, exist_ok=True)


def load_secret_key(settings: Settings) -> bytes:
    if settings.SECRET_KEY:
        return settings.SECRET_KEY.encode()
    path = settings.INSTANCE_DIR / SECRET_KEY_FILE
    if not path.exists():
        # Written whole to a temp name, then linked into place: link() fails
        # if the name exists, so of several workers starting at once exactly
        # one key wins and nobody reads a half-written file.
        temp = path.with_name(f".{SECRET_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(temp, path)
        finally:
            temp.unlink()
    return path.read_text().strip().encode()
