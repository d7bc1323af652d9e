"""Small disk operations the local backend's writers and store share: directory
fsyncs, early writeback, and which OS errors mean full or unwritable."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from quart_app.storage import StorageFull, StorageUnwritable

READ_CHUNK_BYTES = 1024 * 1024
_FULL = (errno.ENOSPC, errno.EDQUOT)
# A read-only mount, permissions taken away, a failing disk, the storage
# directories gone: no write can succeed until someone acts, but nothing is
# wrong with the request (503, not 500).
_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT, errno.ENOTDIR)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def start_writeback(fd: int, start: int, length: int) -> None:
    """Have the kernel start writing these bytes to disk now, without
    waiting for them. Otherwise nothing is written back until the dirty
    pages pass vm.dirty_background_ratio (gigabytes on a large machine), and
    the fsync before the 201 writes the whole upload while the client waits
    (README, "Why the code is shaped this way"). On Linux,
    POSIX_FADV_DONTNEED starts asynchronous writeback of the range; its
    pages are dirty, so none is dropped from the cache."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)


def storage_error(error: OSError) -> Exception:
    if error.errno in _FULL:
        return StorageFull(str(error))
    if error.errno in _UNWRITABLE:
        return StorageUnwritable(str(error))
    return error
