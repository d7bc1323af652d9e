"""The doctor's storage checks. Local directory: writable, fsync and rename
work, its parts on one filesystem (an upload is published by renaming it
from tmp/ into blobs/), not on a tmpfs, room for an upload at the limit. S3:
the bucket reachable with the configured credentials, a probe object put,
read back and deleted."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path

from quart_app.config import ENV_PREFIX, Settings
from quart_app.ops.doctor import FAIL, OK, WARN, Check
from quart_app.storage.local.disk import fsync_dir

PROBE_BYTES = 64 * 1024
# Filesystems whose contents a reboot loses.
VOLATILE_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
# Fewer uploads at the limit than this fit: a warning (one must always fit).
FREE_SPACE_UPLOADS = 4


async def storage_checks(settings: Settings, environ: Mapping[str, str]) -> list[Check]:
    if settings.STORAGE_URL:
        return await s3_checks(settings, environ)
    return await asyncio.to_thread(local_checks, settings)


def local_checks(settings: Settings) -> list[Check]:
    from quart_app.storage.local import LocalBlobStore

    root = settings.STORAGE_DIR
    if not root.exists():
        parent = next(p for p in root.parents if p.exists())
        if os.access(parent, os.W_OK):
            return [Check("storage", WARN, f"{root} does not exist yet: serve creates it")]
        detail = f"{root} does not exist and {parent} is not writable"
        return [Check("storage", FAIL, f"{detail}: create it for the user the server runs as")]
    store = LocalBlobStore(root, settings.WRITE_BATCH_BYTES)
    try:
        store.prepare()
        detail = _write_fsync_rename(store.tmp)
    except OSError as error:
        cause = f"{error.filename or root}: {error.strerror or error}"
        hint = "make it writable by the user the server runs as (a read-only mount? permissions?)"
        return [Check("storage", FAIL, f"{cause}: {hint}")]
    return [
        Check("storage", OK, f"{root} writable: {detail}"),
        _one_filesystem(
            root,
            {
                "tmp/": store.tmp,
                "partial/": store.partial,
                "trash/": store.trash,
                "blobs/": store.blobs,
            },
        ),
        _free_space(root, store.blobs, settings.MAX_UPLOAD_BYTES),
    ]


def _write_fsync_rename(tmp: Path) -> str:
    # Named like an upload's temp file: startup removes one a killed run left.
    name = f"{os.getpid()}-doctor-{secrets.token_hex(8)}"
    path, renamed = tmp / f"{name}.part", tmp / f"{name}-renamed.part"
    data = os.urandom(PROBE_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(path, renamed)
        fsync_dir(tmp)
        if renamed.read_bytes() != data:
            raise OSError(0, "the bytes read back differ from those written", str(renamed))
    finally:
        path.unlink(missing_ok=True)
        renamed.unlink(missing_ok=True)
    return f"{PROBE_BYTES} bytes written, fsynced, renamed, read back and removed in tmp/"


def _one_filesystem(root: Path, parts: dict[str, Path]) -> Check:
    devices = {label: path.stat().st_dev for label, path in parts.items()}
    blobs = devices["blobs/"]
    apart = [label for label, device in devices.items() if device != blobs]
    if apart:
        return Check(
            "storage filesystem",
            FAIL,
            f"{', '.join(apart)} not on blobs/'s filesystem under {root}: uploads are "
            "published by rename, which fails across filesystems (EXDEV); keep the "
            "storage directory on one filesystem (no mounts or symlinks inside it)",
        )
    kind = _filesystem_type(root / "blobs")
    if kind in VOLATILE_FILESYSTEMS:
        return Check(
            "storage filesystem",
            WARN,
            f"{root} is on a {kind}: every file is lost at a reboot; use a disk",
        )
    return Check(
        "storage filesystem", OK, f"tmp/, partial/, trash/ and blobs/ on one {kind or 'filesystem'}"
    )


def _filesystem_type(path: Path) -> str:
    """The type of the mount holding ``path`` (Linux's mountinfo), or ""."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return ""
    target, best, kind = str(path.resolve()), "", ""
    for line in lines:
        fields = line.split()
        mount_point = fields[4].replace("\\040", " ")
        separator = fields.index("-")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, kind = mount_point, fields[separator + 1]
    return kind


def _free_space(root: Path, blobs: Path, limit: int) -> Check:
    free = shutil.disk_usage(blobs).free
    said = f"{free} bytes free under {root}; uploads up to {limit} ({ENV_PREFIX}MAX_UPLOAD_BYTES)"
    if free < limit:
        return Check(
            "free space",
            FAIL,
            f"{said}: an upload at the limit would not fit (507); free space, or lower the limit",
        )
    if free < FREE_SPACE_UPLOADS * limit:
        return Check(
            "free space",
            WARN,
            f"{said}: fewer than {FREE_SPACE_UPLOADS} uploads at the limit fit",
        )
    return Check("free space", OK, said)


async def s3_checks(settings: Settings, environ: Mapping[str, str]) -> list[Check]:
    from quart_app.storage.factory import build_s3_store

    try:
        store = build_s3_store(settings, environ)
    except ImportError as error:
        detail = f"the S3 backend is not installed ({error}): pip install 'quart_app[s3]'"
        return [Check("storage", FAIL, detail)]
    from quart_app.storage.s3.client import S3_ERRORS, unwritable
    from quart_app.storage.s3.store import S3BlobStore
    from quart_app.storage.s3.writer import temp_name

    assert isinstance(store, S3BlobStore)

    location = store.location
    endpoint = store.credentials.endpoint or "AWS's default endpoint"
    # Under tmp/, named like an upload's temp object: recovery removes one a
    # killed run left.
    key = location.key("tmp", temp_name() + "-doctor")
    data = os.urandom(PROBE_BYTES)
    step = "reach the bucket"
    try:
        client = await store.client()
        await client.head_bucket(Bucket=location.bucket)
        step = "put a probe object"
        await client.put_object(Bucket=location.bucket, Key=key, Body=data)
        step = "read the probe object back"
        answer = await client.get_object(Bucket=location.bucket, Key=key)
        async with answer["Body"] as body:
            read = await body.read()
        step = "delete the probe object"
        await client.delete_object(Bucket=location.bucket, Key=key)
    except S3_ERRORS as error:
        hint = "check the bucket and AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, "
        hint += "AWS_SECRET_ACCESS_KEY"
        cause = unwritable(error)
        return [
            Check("storage", FAIL, f"{location.url} at {endpoint}: cannot {step}: {cause}; {hint}")
        ]
    finally:
        await store.close()
    if read != data:
        return [Check("storage", FAIL, f"{location.url}: the probe object read back differs")]
    detail = f"bucket {location.bucket} at {endpoint}: a probe object put, read back and deleted"
    return [Check("storage", OK, detail)]
