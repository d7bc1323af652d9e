"""Archive imports: 202 + a job that ends once, with every file or none."""

from __future__ import annotations

import asyncio
import bz2
import gzip
import hashlib
import io
import lzma
import struct
import tarfile
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.testing import QuartClient

from devtools.form_data import multipart, multipart_headers, part
from devtools.quart_client import as_quart_client
from devtools.stored import blob_files, count_rows, temp_files
from quart_app import create_app
from quart_app.db.models import Blob, File, ImportJob

PROBLEM = "urn:quart-app:problem:"
ENTRIES = {"a.txt": b"alpha\n", "docs/b.md": b"# beta\n", "c.bin": bytes(range(256)) * 40}


def zip_bytes(entries: dict[str, bytes], **info: Any) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


def tar_bytes(entries: dict[str, bytes], mode: str = "w") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=tarfile.PAX_FORMAT) as archive:  # type: ignore[call-overload]
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        ok = tarfile.TarInfo("fine.txt")
        ok.size = 2
        archive.addfile(ok, io.BytesIO(b"ok"))
        archive.addfile(member, io.BytesIO(data) if data else None)
    return out.getvalue()


@pytest.fixture
async def app(overrides: dict[str, Any]) -> AsyncIterator[Quart]:
    application = create_app({**overrides, "IMPORT_POLL_SECONDS": 0.05})
    async with application.test_app():
        yield application


async def finished(client: QuartClient, location: str) -> dict[str, Any]:
    for _ in range(400):
        response = await client.get(location)
        job: dict[str, Any] = await response.get_json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            assert "Retry-After" not in response.headers
            return job
        assert response.headers["Retry-After"] == "1"
        await asyncio.sleep(0.025)
    raise AssertionError(f"the job did not end: {job}")


async def post_archive(client: QuartClient, data: bytes, **headers: str) -> Any:
    return await client.post("/imports", data=data, headers=headers)


FORMATS: dict[str, Callable[[dict[str, bytes]], bytes]] = {
    "zip": zip_bytes,
    "tar": tar_bytes,
    "tar.gz": lambda e: gzip.compress(tar_bytes(e)),
    "tar.bz2": lambda e: bz2.compress(tar_bytes(e)),
    "tar.xz": lambda e: lzma.compress(tar_bytes(e)),
}


@pytest.mark.parametrize("archive_format", FORMATS)
async def test_an_archive_becomes_a_batch_of_its_files(
    app: Quart, client: QuartClient, archive_format: str
) -> None:
    # curl --data-binary says x-www-form-urlencoded: the bytes decide.
    response = await post_archive(
        client,
        FORMATS[archive_format](ENTRIES),
        **{"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 202, await response.get_data()
    job = await response.get_json()
    assert response.headers["Location"] == job["links"]["self"]
    assert response.headers["Retry-After"] == "1"
    assert job["status"] == "queued" and job["archive_format"] == archive_format
    done = await finished(client, response.headers["Location"])
    assert done["status"] == "succeeded", done["problem"]
    assert done["progress"]["entries_done"] == done["progress"]["entries_total"] == 3
    batch = await (await client.get(done["result"]["batch"])).get_json()
    got = {f["filename"]: f["sha256"] for f in batch["files"]}
    assert got == {name: hashlib.sha256(data).hexdigest() for name, data in ENTRIES.items()}
    one = next(f for f in batch["files"] if f["filename"] == "c.bin")
    assert await (await client.get(one["links"]["content"])).get_data() == ENTRIES["c.bin"]
    assert await count_rows(app, ImportJob) == 1
    assert await count_rows(app, Blob) == 3  # the archive's bytes were released


async def test_one_multipart_part_works_and_idempotency_replays_the_job(
    app: Quart, client: QuartClient
) -> None:
    body = multipart(part("file", zip_bytes(ENTRIES), "pack.zip", "application/zip"))
    headers = {**multipart_headers(), "Idempotency-Key": "import-1"}
    first = await client.post("/imports", data=body, headers=headers)
    assert first.status_code == 202
    again = await client.post("/imports", data=body, headers=headers)
    assert again.status_code == 202
    assert (await again.get_json())["id"] == (await first.get_json())["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await finished(client, first.headers["Location"]))["status"] == "succeeded"
    assert await count_rows(app, ImportJob) == 1


@pytest.mark.parametrize(
    "body",
    [b"just some text, not an archive" * 100, gzip.compress(b"a gzip of text" * 100), b""],
    ids=["text", "gzip-not-tar", "empty"],
)
async def test_what_is_not_an_archive_is_415_and_nothing_is_stored(
    app: Quart, client: QuartClient, overrides: dict[str, Any], body: bytes
) -> None:
    response = await post_archive(client, body, **{"Content-Type": "application/zip"})
    assert response.status_code == 415
    assert (await response.get_json())["type"] == PROBLEM + "unsupported-media-type"
    assert await count_rows(app, ImportJob) == 0
    assert await count_rows(app, Blob) == 0
    storage = Path(overrides["STORAGE_DIR"])
    assert blob_files(storage) == [] and temp_files(storage) == []


def _encrypted_zip() -> bytes:
    data = bytearray(zip_bytes({"secret.txt": b"x" * 100}))
    # The "encrypted" flag in the local header and the central directory.
    data[6] |= 1
    central = data.rfind(b"PK\x01\x02")
    data[central + 8] |= 1
    return bytes(data)


def _bad_crc_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.txt", b"A" * 1000)
    data = bytearray(out.getvalue())
    data[data.find(b"A" * 1000) + 10] = ord("B")
    return bytes(data)


def _lying_zip64() -> bytes:
    """A zip64 entry whose directory says it holds 10 bytes: it holds 100,000."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("big.txt", "w", force_zip64=True) as entry,
    ):
        entry.write(b"A" * 100_000)
    data = bytearray(out.getvalue())
    central = data.rfind(b"PK\x01\x02")
    extra = data.find(b"\x01\x00", central + 46)  # the zip64 extra field
    if data[central + 24 : central + 28] == b"\xff" * 4:
        struct.pack_into("<Q", data, extra + 4, 10)
    else:
        struct.pack_into("<I", data, central + 24, 10)
    return bytes(data)


def _symlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo("link")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


def _hardlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo("hard")
    info.type, info.linkname = tarfile.LNKTYPE, "fine.txt"
    return info


def _device() -> tarfile.TarInfo:
    info = tarfile.TarInfo("dev")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


def _fifo() -> tarfile.TarInfo:
    info = tarfile.TarInfo("pipe")
    info.type = tarfile.FIFOTYPE
    return info


def _zip_symlink() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        info = zipfile.ZipInfo("link")
        info.external_attr = 0o120777 << 16
        archive.writestr(info, "/etc/passwd")
    return out.getvalue()


HOSTILE: dict[str, tuple[Callable[[], bytes], str, str | None]] = {
    "zip-slip ..": (
        lambda: zip_bytes({"ok.txt": b"1", "../evil.txt": b"2"}),
        "climbs",
        "../evil.txt",
    ),
    "absolute": (lambda: tar_bytes({"/etc/evil": b"2"}), "absolute", "/etc/evil"),
    "drive letter": (lambda: zip_bytes({"C:/evil.txt": b"2"}), "absolute", "C:/evil.txt"),
    "backslash": (lambda: zip_bytes({"a\\..\\evil.txt": b"2"}), "backslash", "a\\..\\evil.txt"),
    "symlink": (lambda: tar_with(_symlink()), "link", "link"),
    "zip symlink": (_zip_symlink, "link", "link"),
    "hard link": (lambda: tar_with(_hardlink()), "link", "hard"),
    "device": (lambda: tar_with(_device()), "device", "dev"),
    "fifo": (lambda: tar_with(_fifo()), "FIFO", "pipe"),
    "encrypted": (_encrypted_zip, "encrypted", "secret.txt"),
    "crc mismatch": (_bad_crc_zip, "corrupt", "a.txt"),
    "zip64 lying size": (_lying_zip64, "corrupt", "big.txt"),
    "truncated tar.gz": (lambda: gzip.compress(tar_bytes(ENTRIES))[:-200], "truncated", "c.bin"),
    "truncated zip": (lambda: zip_bytes(ENTRIES)[:-30], "truncated", None),
    "bomb": (lambda: gzip.compress(tar_bytes({"zeros": bytes(30 * 1024 * 1024)})), "bomb", "zeros"),
}


@pytest.mark.parametrize("case", HOSTILE)
async def test_a_hostile_archive_fails_its_job_and_leaves_nothing(
    app: Quart, client: QuartClient, overrides: dict[str, Any], case: str
) -> None:
    make, reason, entry = HOSTILE[case]
    response = await post_archive(client, make())
    assert response.status_code == 202, await response.get_data()
    done = await finished(client, response.headers["Location"])
    assert done["status"] == "failed", done
    problem = done["problem"]
    assert problem["type"] == PROBLEM + "import-failed" and problem["status"] == 422
    assert reason in problem["detail"], problem
    assert problem.get("entry") == entry, problem
    assert done["result"] is None
    assert await count_rows(app, File) == 0
    assert await count_rows(app, Blob) == 0
    storage = Path(overrides["STORAGE_DIR"])
    assert blob_files(storage) == [] and temp_files(storage) == []


async def test_limits_on_entries_and_entry_size(overrides: dict[str, Any]) -> None:
    app = create_app(
        {
            **overrides,
            "IMPORT_POLL_SECONDS": 0.05,
            "IMPORT_MAX_ENTRIES": 3,
            "MAX_UPLOAD_BYTES": 5000,
        }
    )
    async with app.test_app():
        client = as_quart_client(app.test_client())
        many = await post_archive(client, zip_bytes({f"{i}.txt": b"x" for i in range(4)}))
        assert many.status_code == 202, await many.get_data()
        done = await finished(client, many.headers["Location"])
        assert done["status"] == "failed" and "more than 3 entries" in done["problem"]["detail"]
        big = await post_archive(client, gzip.compress(tar_bytes({"big.bin": b"y" * 6000})))
        done = await finished(client, big.headers["Location"])
        assert done["status"] == "failed" and done["problem"]["entry"] == "big.bin"
        assert await count_rows(app, File) == 0


async def test_names_are_decoded_per_format_and_nested_archives_stay_whole(
    app: Quart, client: QuartClient
) -> None:
    inner = zip_bytes({"inner.txt": b"i"})
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in ((b"caf\xe9.txt", b"latin-1 name"), (b"nested.zip", inner)):
            info = tarfile.TarInfo(name.decode("utf-8", "surrogateescape"))
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    response = await post_archive(client, out.getvalue())
    done = await finished(client, response.headers["Location"])
    assert done["status"] == "succeeded", done["problem"]
    batch = await (await client.get(done["result"]["batch"])).get_json()
    assert sorted(f["filename"] for f in batch["files"]) == ["café.txt", "nested.zip"]
    cp437 = io.BytesIO()
    with zipfile.ZipFile(cp437, "w") as archive:
        archive.writestr(zipfile.ZipInfo("na\u00efve.txt"), b"n")  # stored as UTF-8, flagged
    response = await post_archive(client, cp437.getvalue())
    done = await finished(client, response.headers["Location"])
    batch = await (await client.get(done["result"]["batch"])).get_json()
    assert [f["filename"] for f in batch["files"]] == ["naïve.txt"]


async def test_another_owner_sees_no_job_and_a_finished_job_cannot_be_canceled(
    app: Quart, client: QuartClient
) -> None:
    response = await post_archive(client, zip_bytes(ENTRIES))
    location = response.headers["Location"]
    await finished(client, location)
    canceled = await client.delete(location)
    assert canceled.status_code == 409
    admin = client
    made = await admin.post("/users", json={"name": "Bob", "email": "bob@example.com"})
    key = await admin.post(f"/users/{(await made.get_json())['id']}/keys", json={})
    bob = as_quart_client(app.test_client())
    bob.key = (await key.get_json())["secret"]  # type: ignore[attr-defined]
    assert (await bob.get(location)).status_code == 404
    assert (await bob.delete(location)).status_code == 404
    assert (await (await bob.get("/imports")).get_json())["items"] == []
    assert len((await (await admin.get("/imports")).get_json())["items"]) == 1


async def test_canceling_a_queued_job_leaves_nothing(overrides: dict[str, Any]) -> None:
    app = create_app({**overrides, "IMPORT_WORKERS": 0})  # no worker: it stays queued
    async with app.test_app():
        client = as_quart_client(app.test_client())
        response = await post_archive(client, zip_bytes(ENTRIES))
        canceled = await client.delete(response.headers["Location"])
        assert canceled.status_code == 200
        assert (await canceled.get_json())["status"] == "canceled"
        assert await count_rows(app, Blob) == 0  # the archive is gone
        assert await count_rows(app, File) == 0
        assert (await client.delete(response.headers["Location"])).status_code == 409


async def test_an_import_past_the_owners_quota_fails_and_stores_nothing(
    app: Quart, client: QuartClient
) -> None:
    made = await client.post("/users", json={"name": "Bob", "email": "bob@example.com"})
    bob_id = (await made.get_json())["id"]
    patched = await client.patch(f"/users/{bob_id}", json={"quota_files": 2})
    assert patched.status_code == 200, await patched.get_data()
    key = await client.post(f"/users/{bob_id}/keys", json={})
    bob = as_quart_client(app.test_client())
    bob.key = (await key.get_json())["secret"]  # type: ignore[attr-defined]
    response = await post_archive(bob, zip_bytes(ENTRIES))  # 3 files, room for 2
    assert response.status_code == 202
    done = await finished(bob, response.headers["Location"])
    assert done["status"] == "failed"
    assert done["problem"]["type"] == PROBLEM + "quota-exceeded"
    assert await count_rows(app, File) == 0
    assert await count_rows(app, Blob) == 0
