"""The storage contract. Tests taking ``any_store`` run on both backends:
the local directory, and S3 on a real SeaweedFS (those are marked e2e: they
need its process). The others are about the local layout."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devtools.full_disk import FullDisk
from quart_app.config import load_settings
from quart_app.storage import (
    BlobMissing,
    BlobTooLarge,
    MaintainedStore,
    SealedBlob,
    StorageFull,
)
from quart_app.storage.factory import build_store
from quart_app.storage.local import LocalBlobReader, LocalBlobStore
from quart_app.storage.s3 import recovery
from quart_app.storage.s3.store import S3BlobStore

MiB = 1024 * 1024


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


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.e2e)])
async def any_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[MaintainedStore]:
    """Each backend as the factory builds it; S3 with 5 MiB parts (the least
    S3 allows), so a few MiB cross part boundaries. No blob is kept in its
    row here: those are the database's (tests/app/test_inline_blobs.py, and
    test_a_small_blob_on_s3_makes_no_object below)."""
    if request.param == "local":
        settings = load_settings(
            {"STORAGE_DIR": tmp_path / "store", "INLINE_BLOB_BYTES": 0}, environ={}
        )
        store = build_store(settings, environ={})
    else:
        env: dict[str, str] = request.getfixturevalue("s3_env")
        settings = load_settings({"S3_PART_BYTES": 5 * MiB, "INLINE_BLOB_BYTES": 0}, environ=env)
        store = build_store(settings, environ=env)
    try:
        yield store
    finally:
        await store.close()


async def left_in_store(store: MaintainedStore) -> list[str]:
    """Temp files and objects, unfinished multipart uploads, trash, markers."""
    names = await store.abandoned_temps(-1e9) + await store.trash_names()
    if isinstance(store, S3BlobStore):
        names += await recovery.names_under(store, "publishing")
    return names


async def write_blob(store: MaintainedStore, data: bytes, chunk: int = 65536) -> str:
    writer = store.writer(len(data))
    for i in range(0, len(data), chunk):
        await writer.write(data[i : i + chunk])
    sealed = await writer.seal()
    assert await writer.publish() is True
    await writer.settle()
    return sealed.sha256


async def read_all(store: MaintainedStore, sha256: str, start: int = 0, end: int = 2**63) -> bytes:
    blob = await store.open(sha256)
    return b"".join([c async for c in blob.chunks(start, end)])


@pytest.mark.parametrize("size", [0, 1000, 5 * MiB, 12 * MiB + 7])
async def test_a_blob_streams_in_and_out_content_addressed(
    any_store: MaintainedStore, size: int
) -> None:
    data = os.urandom(size)
    sha = await write_blob(any_store, data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert await any_store.stored([sha, "0" * 64]) == {sha}
    assert (await any_store.open(sha)).size == size
    assert await read_all(any_store, sha) == data
    assert await any_store.blob_names() == {sha}
    assert await any_store.digest(sha) == (sha, size)
    assert await left_in_store(any_store) == []


@pytest.mark.e2e
async def test_a_small_blob_on_s3_makes_no_object(s3_env: dict[str, str]) -> None:
    """Up to INLINE_BLOB_BYTES a blob is handed back for its row, as on
    local disk: nothing in the bucket, no multipart upload; one byte more
    and it is an object again."""
    settings = load_settings({"S3_PART_BYTES": 5 * MiB, "INLINE_BLOB_BYTES": 4096}, environ=s3_env)
    store = build_store(settings, environ=s3_env)
    try:
        small = os.urandom(4096)
        writer = store.writer(len(small))
        await writer.write(small[:1000])
        await writer.write(small[1000:])
        sealed = await writer.seal()
        assert sealed == SealedBlob(hashlib.sha256(small).hexdigest(), 4096, small)
        await writer.discard()
        assert await store.blob_names() == set()
        assert await left_in_store(store) == []
        larger = small + b"x"
        sha = await write_blob(store, larger)
        assert await store.blob_names() == {sha}
        assert await read_all(store, sha) == larger
        assert await left_in_store(store) == []
    finally:
        await store.close()


async def test_nothing_is_at_the_address_before_publish(any_store: MaintainedStore) -> None:
    data = os.urandom(6 * MiB)
    writer = any_store.writer(len(data))
    await writer.write(data)
    sealed = await writer.seal()
    assert await any_store.stored([sealed.sha256]) == set()
    with pytest.raises(BlobMissing):
        await any_store.open(sealed.sha256)
    await writer.discard()
    assert await left_in_store(any_store) == []


async def test_identical_content_is_stored_once_and_the_loser_dropped(
    any_store: MaintainedStore,
) -> None:
    data = os.urandom(6 * MiB + 3)
    first, second = any_store.writer(len(data)), any_store.writer(len(data))
    for writer in (first, second):
        await writer.write(data)
        await writer.seal()
    assert await first.publish() is True
    assert await second.publish() is False
    await first.settle()
    await second.discard()
    assert len(await any_store.blob_names()) == 1
    assert await left_in_store(any_store) == []


async def test_unpublish_takes_the_blob_away(any_store: MaintainedStore) -> None:
    writer = any_store.writer(100)
    await writer.write(b"rolled back")
    sealed = await writer.seal()
    assert await writer.publish() is True
    await writer.unpublish()
    assert await any_store.stored([sealed.sha256]) == set()
    assert await left_in_store(any_store) == []


async def test_a_failed_upload_leaves_nothing(any_store: MaintainedStore) -> None:
    writer = any_store.writer(11 * MiB)
    await writer.write(os.urandom(11 * MiB))  # two whole parts on S3
    with pytest.raises(BlobTooLarge):
        await writer.write(b"one too many")
    await writer.discard()
    await writer.discard()  # idempotent
    assert await any_store.blob_names() == set()
    assert await left_in_store(any_store) == []


async def test_retire_restore_purge_on_both(any_store: MaintainedStore) -> None:
    data = os.urandom(5000)
    sha = await write_blob(any_store, data)
    token = await any_store.retire(sha)
    assert token is not None
    assert await any_store.stored([sha]) == set()
    # Retired but not purged: a download that read the row a moment ago still
    # finds the bytes.
    assert await read_all(any_store, sha) == data
    await any_store.restore(token)
    assert await any_store.stored([sha]) == {sha}
    token = await any_store.retire(sha)
    assert token is not None
    await any_store.purge(token)
    await any_store.purge(token)  # idempotent
    assert await any_store.retire(sha) is None
    with pytest.raises(BlobMissing):
        await any_store.open(sha)
    assert await left_in_store(any_store) == []


async def test_ranges_on_both(any_store: MaintainedStore) -> None:
    data = os.urandom(3 * MiB)
    sha = await write_blob(any_store, data)
    assert await read_all(any_store, sha, 100, 2_000_000) == data[100:2_000_000]
    assert await read_all(any_store, sha, len(data) - 1, 2**63) == data[-1:]
    assert await read_all(any_store, sha, 5, 5) == b""


async def test_probe_on_both(any_store: MaintainedStore) -> None:
    await any_store.probe()
    assert await left_in_store(any_store) == []


async def write_partial(
    store: MaintainedStore, upload_id: str, offset: int, data: bytes, state: object
) -> int:
    writer = store.partial_writer(upload_id, offset, [state])
    await writer.acquire()
    try:
        for i in range(0, len(data), 256 * 1024):
            await writer.write(data[i : i + 256 * 1024])
        return await writer.make_durable()
    finally:
        writer.release()


async def test_a_partial_grows_across_writers_and_publishes(any_store: MaintainedStore) -> None:
    """PATCHes shorter than a part, longer than one, ending mid-part: the
    running hash, the hash read back, and the composed blob all agree."""
    data = os.urandom(13 * MiB + 11)
    cuts = [0, 3_000_000, 9_000_000, 10 * MiB, len(data)]
    await any_store.create_partial("up-1")
    state = hashlib.sha256()
    offset = 0
    for start, end in itertools.pairwise(cuts):
        assert offset == start
        offset = await write_partial(any_store, "up-1", offset, data[start:end], state)
        # Another server (no running hash) reads the partial back.
        assert (await any_store.hash_partial("up-1", offset)).digest() == state.digest()
    sha = state.hexdigest()
    assert sha == hashlib.sha256(data).hexdigest()
    assert await any_store.publish_partial("up-1", sha, len(data)) is True
    await any_store.settle_publish(sha)
    await any_store.delete_partial("up-1")
    assert await read_all(any_store, sha) == data
    assert await any_store.stale_partials(set(), -1e9) == []
    assert await left_in_store(any_store) == []


async def test_a_rolled_back_patch_leaves_the_offset_where_it_was(
    any_store: MaintainedStore,
) -> None:
    data = os.urandom(7 * MiB)
    await any_store.create_partial("up-2")
    state = hashlib.sha256()
    offset = await write_partial(any_store, "up-2", 0, data[:1000], state)
    writer = any_store.partial_writer("up-2", offset, [hashlib.sha256()])
    await writer.acquire()
    await writer.write(os.urandom(6 * MiB))  # crosses a part boundary
    await writer.roll_back()
    writer.release()
    offset = await write_partial(any_store, "up-2", offset, data[1000:], state)
    assert (await any_store.hash_partial("up-2", offset)).hexdigest() == state.hexdigest()
    assert state.hexdigest() == hashlib.sha256(data).hexdigest()
    assert await any_store.publish_partial("up-2", state.hexdigest(), len(data)) is True
    assert await read_all(any_store, state.hexdigest()) == data


async def test_a_partial_file_open_in_one_writer_is_busy_for_another(
    store: LocalBlobStore,
) -> None:
    """On disk the flock keeps a stalled writer (its lease ran out) from
    mixing its bytes with the next one's; who writes is the lease's call."""
    from quart_app.storage import PartialBusy

    await store.create_partial("up-3")
    holder = store.partial_writer("up-3", 0, [])
    await holder.acquire()
    other = store.partial_writer("up-3", 0, [])
    with pytest.raises(PartialBusy):
        await other.acquire()
    holder.release()
    await store.delete_partial("up-3")
    with pytest.raises(BlobMissing):
        await store.partial_writer("up-3", 0, []).acquire()


async def test_a_missing_partial_is_blob_missing(any_store: MaintainedStore) -> None:
    with pytest.raises(BlobMissing):
        await any_store.partial_writer("up-4", 0, []).acquire()


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


def test_s3_sessions_share_the_service_descriptions_and_nothing_else() -> None:
    """A process opening many stores reads botocore's service descriptions
    once (storage/s3/client.py); the loader's search path does not grow."""
    from quart_app.storage.s3.client import _session

    first, second = _session(), _session()
    loader = first.get_component("data_loader")
    paths = list(loader.search_paths)
    assert second.get_component("data_loader") is loader
    assert _session().get_component("data_loader").search_paths == paths
    assert first is not second  # credentials and settings stay each session's own
