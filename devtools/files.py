"""Payload files and their digests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MiB = 1024 * 1024


def make_file(path: Path, size: int) -> Path:
    """Random bytes (no dedupe shortcut), written once and reused. Fsynced:
    otherwise its writeback competes with the first uploads (measured: the
    first figure of a run came out a third lower)."""
    if not path.exists() or path.stat().st_size != size:
        with path.open("wb") as handle:
            block = hashlib.sha256(b"seed").digest() * (MiB // 32)
            for index in range(size // MiB):
                handle.write(hashlib.sha256(str(index).encode()).digest() + block[32:])
            handle.write(block[: size % MiB])
            handle.flush()
            os.fsync(handle.fileno())
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()
