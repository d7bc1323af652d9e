from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import pytest

from devtools.full_disk import FullDisk
from quart_app.storage import BlobMissing, BlobTooLarge, StorageFull
from quart_app.storage.local import LocalBlobReader, LocalBlobStore


class CountingStore(LocalBlobStore):
    def __init__(self, root: Path, batch_bytes: int) -> None:
        super().__init__(root, batch_bytes)
        self.writes: list[int] = []

    def os_write(self, fd: int, data: memoryview) -> int:
        self.writes.append(len(data))
        return super().os_write(fd, data)


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    blob_store = LocalBlobStore(tmp_path / "store", 1024 * 1024)
    blob_store.prepare()
    return blob_store


def leftovers(store: LocalBlobStore) -> list[str]:
    return sorted(p.name for d in (store.tmp, store.trash) for p in d.iterdir())


async def test_write_seal_publish_is_content_addressed(store: LocalBlobStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    writer = store.writer(len(data))
    for i in range(0, len(data), 65536):
        await writer.write(data[i : i + 65536])
    sealed = await writer.seal()
    assert sealed.sha256 == hashlib.sha256(data).hexdigest()
    assert sealed.size == len(data)
    assert await writer.publish() is True
    # Until its transaction commits, a marker names the published blob.
    assert store.publish_marker(sealed.sha256).exists()
    await writer.settle()
    path = store.path_for(sealed.sha256)
    assert path.read_bytes() == data
    assert path.parent.parent.parent == store.blobs
    assert leftovers(store) == []


async def test_identical_content_is_stored_once(store: LocalBlobStore) -> None:
    for expected in (True, False):
        writer = store.writer(10)
        await writer.write(b"same")
        await writer.seal()
        assert await writer.publish() is expected
        await writer.settle()
    assert len(list(store.blobs.rglob("*"))) == 3  # ab/, ab/cd/, the blob
    assert leftovers(store) == []


async def test_writes_are_batched_to_about_the_batch_size(tmp_path: Path) -> None:
    store = CountingStore(tmp_path, 1024 * 1024)
    store.prepare()
    writer = store.writer(16 * 1024 * 1024)
    for _ in range(160):
        await writer.write(b"x" * 65536)
    await writer.seal()
    assert len(store.writes) <= 11  # 10 MiB in 64 KiB chunks: ~10 writes, not 160
    assert min(store.writes[:-1]) >= 1024 * 1024


async def test_empty_blob(store: LocalBlobStore) -> None:
    writer = store.writer(0)
    sealed = await writer.seal()
    assert sealed.sha256 == hashlib.sha256(b"").hexdigest()
    await writer.publish()
    assert store.path_for(sealed.sha256).read_bytes() == b""


async def test_limit_is_enforced_as_bytes_arrive(store: LocalBlobStore) -> None:
    writer = store.writer(10)
    await writer.write(b"x" * 10)
    with pytest.raises(BlobTooLarge):
        await writer.write(b"y")
    await writer.discard()
    await writer.discard()  # idempotent
    assert leftovers(store) == []


async def test_disk_full_raises_storage_full_and_discard_cleans_up(tmp_path: Path) -> None:
    store = FullDisk(tmp_path, room=100_000)
    store.prepare()
    writer = store.writer(10**9)
    with pytest.raises(StorageFull):
        for _ in range(100):
            await writer.write(b"z" * 65536)
        await writer.seal()
    await writer.discard()
    assert leftovers(store) == []


async def test_retire_restore_purge(store: LocalBlobStore) -> None:
    writer = store.writer(100)
    await writer.write(b"keep me")
    sealed = await writer.seal()
    await writer.publish()
    await writer.settle()
    token = await store.retire(sealed.sha256)
    assert token is not None
    assert await store.stored([sealed.sha256]) == set()
    await store.restore(token)
    assert await store.stored([sealed.sha256, "0" * 64]) == {sealed.sha256}
    token = await store.retire(sealed.sha256)
    assert token is not None
    await store.purge(token)
    await store.purge(token)  # idempotent
    assert await store.retire(sealed.sha256) is None
    assert leftovers(store) == []


async def stored_blob(store: LocalBlobStore, data: bytes) -> str:
    writer = store.writer(len(data))
    await writer.write(data)
    sealed = await writer.seal()
    await writer.publish()
    return sealed.sha256


def open_files() -> set[str]:
    """What this process's descriptors point at (the one listing the
    directory vanishes as it is read)."""
    names = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            names.add(os.readlink(f"/proc/self/fd/{fd}"))
    return names


async def test_read_ranges(store: LocalBlobStore) -> None:
    data = os.urandom(3 * 1024 * 1024)
    sha = await stored_blob(store, data)
    whole = await store.open(sha)
    assert whole.size == len(data)
    assert b"".join([c async for c in whole.chunks(0, 2**63)]) == data
    part = await store.open(sha)
    assert b"".join([c async for c in part.chunks(100, 2_000_000)]) == data[100:2_000_000]


async def test_an_open_blob_outlives_its_retirement_and_purge(store: LocalBlobStore) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    sha = await stored_blob(store, data)
    blob = await store.open(sha)
    token = await store.retire(sha)
    assert token is not None
    await store.purge(token)
    assert b"".join([c async for c in blob.chunks(0, len(data))]) == data
    with pytest.raises(BlobMissing):
        await store.open(sha)


async def test_a_retired_blob_opens_until_it_is_purged(store: LocalBlobStore) -> None:
    """Between a replace's retire and its purge, the row a download read a
    moment ago still names these bytes."""
    data = os.urandom(1000)
    sha = await stored_blob(store, data)
    token = await store.retire(sha)
    assert token is not None
    blob = await store.open(sha)
    assert b"".join([c async for c in blob.chunks(0, 1000)]) == data
    await store.purge(token)
    with pytest.raises(BlobMissing):
        await store.open(sha)


async def test_a_reader_closes_its_file_however_it_ends(store: LocalBlobStore) -> None:
    sha = await stored_blob(store, os.urandom(3 * 1024 * 1024))
    path = str(store.path_for(sha))
    read_whole = await store.open(sha)
    assert [c async for c in read_whole.chunks(0, 2**63)]
    never_started = (await store.open(sha)).chunks(0, 10)
    await never_started.aclose()  # what Quart does with a body it never sent
    started = (await store.open(sha)).chunks(0, 2**63)
    await anext(started)
    await started.aclose()
    closed = await store.open(sha)
    closed.close()
    closed.close()
    assert path not in open_files()
    dropped = LocalBlobReader(os.open(path, os.O_RDONLY))
    assert path in open_files()
    del dropped  # a response built and never sent
    assert path not in open_files()


def test_path_for_refuses_anything_but_a_digest(store: LocalBlobStore) -> None:
    for bad in ("../../etc/passwd", "A" * 64, "ab"):
        with pytest.raises(ValueError):
            store.path_for(bad)
