"""A local blob store whose disk fills up: the storage tests and the app
tests both put it where the real store would be."""

from __future__ import annotations

import errno
from pathlib import Path

from quart_app.storage.local import LocalBlobStore


class FullDisk(LocalBlobStore):
    """A store whose disk fills up after ``room`` bytes."""

    def __init__(self, root: Path, room: int) -> None:
        super().__init__(root, 64 * 1024)
        self.room = room

    def os_write(self, fd: int, data: memoryview) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return super().os_write(fd, data)
