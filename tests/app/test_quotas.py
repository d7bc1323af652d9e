"""Quotas per user: bytes by the files' sizes and a number of files, refused
with 507 quota-exceeded before any byte is stored when the size is declared,
as soon as the bytes pass the room otherwise, never overshot by concurrent
uploads, and leaving nothing behind."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from quart import Quart, Response
from quart import typing as quart_typing
from sqlalchemy import delete, event, select, update
from sqlalchemy.dialects import postgresql

from devtools.auth import TEST_ADMIN_KEY, KeyedClient
from devtools.form_data import multipart, multipart_headers, part
from devtools.quart_client import as_http_connection
from devtools.stored import blob_files, count_rows, partial_files, temp_files
from quart_app import create_app
from quart_app.db.models import File, QuotaReservation, Upload, User, utc_now
from quart_app.errors import QuotaExceeded
from quart_app.ops.sweeps import sweep_once
from quart_app.state import app_state
from quart_app.storage import StorageUnwritable

PROBLEM = "urn:quart-app:problem:quota-exceeded"


def keyed(client: quart_typing.TestClientProtocol) -> KeyedClient:
    assert isinstance(client, KeyedClient)
    return client


TUS = {"Tus-Resumable": "1.0.0"}


async def new_user(
    client: KeyedClient, name: str = "quota", **quota: int | None
) -> tuple[int, str]:
    """A user (with ``quota`` set by the admin) and a read-write key of theirs."""
    client.key = TEST_ADMIN_KEY
    made = await client.post("/users", json={"name": name, "email": f"{name}@example.com"})
    assert made.status_code == 201, await made.get_data()
    user_id = (await made.get_json())["id"]
    if quota:
        patched = await client.patch(f"/users/{user_id}", json=quota)
        assert patched.status_code == 200, await patched.get_json()
    key = await client.post(f"/users/{user_id}/keys", json={})
    assert key.status_code == 201
    return user_id, (await key.get_json())["secret"]


# Quart's test client sends no Content-Length of its own; HTTP clients do.


async def put(client: KeyedClient, name: str, data: bytes) -> Response:
    return await client.put(
        f"/files/{name}",
        data=data,
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
    )


async def post_raw(client: KeyedClient, name: str, data: bytes) -> Response:
    return await client.post(
        "/files",
        data=data,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{name}"',
            "Content-Length": str(len(data)),
        },
    )


async def usage(client: KeyedClient, user_id: int) -> dict[str, int]:
    client.key, key = TEST_ADMIN_KEY, client.key
    try:
        body = await (await client.get(f"/users/{user_id}")).get_json()
    finally:
        client.key = key
    result: dict[str, int] = body["usage"]
    return result


async def assert_refused(response: Response, quota: str) -> dict[str, Any]:
    assert response.status_code == 507, await response.get_data()
    assert response.content_type == "application/problem+json"
    problem: dict[str, Any] = await response.get_json()
    assert problem["type"] == PROBLEM
    assert problem["quota"] == quota
    assert isinstance(problem["remaining"], int)
    assert "Retry-After" in response.headers
    return problem


async def assert_nothing_left(app: Quart, storage: Path, files: int = 0) -> None:
    """No reservation, no temp file, and only the ``files`` expected."""
    assert await count_rows(app, QuotaReservation) == 0
    assert temp_files(storage) == []
    assert await count_rows(app, File) == files


# -- the user representation and PATCH /users/{id} ------------------------------


async def test_an_admin_sets_a_users_quota_and_null_restores_the_default(
    overrides: dict[str, Any],
) -> None:
    app = create_app({**overrides, "DEFAULT_QUOTA_BYTES": 5000, "DEFAULT_QUOTA_FILES": 7})
    async with app.test_app() as test_app:
        client = keyed(test_app.test_client())
        user_id, _ = await new_user(client)
        shown = await (await client.get(f"/users/{user_id}")).get_json()
        assert (shown["quota_bytes"], shown["quota_files"]) == (5000, 7)
        assert shown["usage"] == {"bytes": 0, "files": 0}

        patched = await client.patch(f"/users/{user_id}", json={"quota_bytes": 100})
        assert patched.status_code == 200
        body = await patched.get_json()
        assert (body["quota_bytes"], body["quota_files"]) == (100, 7)  # files left as it was
        assert await (await client.get(f"/users/{user_id}")).get_json() == body

        unlimited = await client.patch(f"/users/{user_id}", json={"quota_files": 0})
        assert (await unlimited.get_json())["quota_files"] == 0
        back = await client.patch(
            f"/users/{user_id}", json={"quota_bytes": None, "quota_files": None}
        )
        body = await back.get_json()
        assert (body["quota_bytes"], body["quota_files"]) == (5000, 7)
        listed = await (await client.get("/users")).get_json()
        assert listed["items"] == [body]


async def set_quota_elsewhere(app: Quart, user_id: int, quota_bytes: int | None) -> None:
    """As another worker's PATCH would: in the database, not this process."""
    database = app_state(app).database
    async with database.sessionmaker() as session, database.writing(session):
        await session.execute(
            update(User).where(User.id == user_id).values(quota_bytes=quota_bytes)
        )


async def test_a_workers_limits_are_read_at_most_once_per_key_cache_time(
    overrides: dict[str, Any],
) -> None:
    """Before an upload the owner's limits come from what this worker read
    less than KEY_CACHE_SECONDS ago (no read per upload). A limit set on
    another worker reaches an owner that had none within that time; one set
    here, at once; and an owner that had a limit is held to the new one at
    once everywhere, since room is taken with the limits read again under
    the owner's lock."""
    for cache_seconds in (60.0, 0.001):
        app = create_app({**overrides, "KEY_CACHE_SECONDS": cache_seconds})
        async with app.test_app() as test_app:
            client = keyed(test_app.test_client())
            run = int(cache_seconds > 1)
            free_id, free_key = await new_user(client, f"free{run}")
            limited_id, limited_key = await new_user(client, f"limited{run}", quota_bytes=1000)
            client.key = free_key
            assert (await put(client, "first", b"x" * 100)).status_code == 201
            client.key = limited_key
            assert (await put(client, "first", b"x" * 100)).status_code == 201

            await set_quota_elsewhere(app, free_id, 150)
            await set_quota_elsewhere(app, limited_id, 150)
            client.key = free_key
            answer = await put(client, "second", b"x" * 100)
            if cache_seconds > 1:
                assert answer.status_code == 201  # no limit, as this worker read it
            else:
                await assert_refused(answer, "bytes")
            client.key = limited_key
            await assert_refused(await put(client, "second", b"x" * 100), "bytes")

            client.key = TEST_ADMIN_KEY
            for user_id in (free_id, limited_id):
                patched = await client.patch(f"/users/{user_id}", json={"quota_bytes": 50})
                assert patched.status_code == 200
            for key in (free_key, limited_key):
                client.key = key
                await assert_refused(await put(client, "third", b"x"), "bytes")


async def test_requests_arriving_together_read_a_key_and_its_limits_once(
    client: KeyedClient, app: Quart
) -> None:
    """A key not yet cached (or whose entry lapsed) and its owner's limits
    are each read once for all the requests that need them at that moment,
    not once per request (services/single_flight.py)."""
    user_id, key = await new_user(client, "together", quota_bytes=10_000)
    state = app_state(app)
    reads: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("SELECT"):
            reads.append(statement)

    engine = state.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        accesses = await asyncio.gather(*(state.keys.lookup(key) for _ in range(20)))
        limits = await asyncio.gather(*(state.quotas.current_limits(user_id) for _ in range(20)))
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert {access.user_id for access in accesses if access is not None} == {user_id}
    assert None not in accesses
    assert {limit.bytes for limit in limits} == {10_000}
    assert len([r for r in reads if "FROM api_keys" in r]) == 1, reads
    assert len([r for r in reads if "FROM users" in r]) == 1, reads


async def test_only_an_admin_may_set_a_quota(client: KeyedClient) -> None:
    user_id, key = await new_user(client, quota_bytes=100)
    client.key = key
    refused = await client.patch(f"/users/{user_id}", json={"quota_bytes": 10**9})
    assert refused.status_code == 403
    assert (await refused.get_json())["type"] == "urn:quart-app:problem:insufficient-scope"
    client.key = TEST_ADMIN_KEY
    assert (await (await client.get(f"/users/{user_id}")).get_json())["quota_bytes"] == 100
    # and a user sees its own quota and usage
    client.key = key
    own = await (await client.get(f"/users/{user_id}")).get_json()
    assert own["quota_bytes"] == 100 and own["usage"] == {"bytes": 0, "files": 0}


async def test_a_bad_quota_is_400_and_an_unknown_user_404(client: KeyedClient) -> None:
    user_id, _ = await new_user(client)
    for body in ({"quota_bytes": -1}, {"quota_files": "5"}, {"quota": 5}, {"quota_bytes": 1.5}):
        response = await client.patch(f"/users/{user_id}", json=body)
        assert response.status_code == 400, body
    assert (await client.patch("/users/9999", json={"quota_bytes": 5})).status_code == 404


async def test_usage_counts_every_files_size_even_when_bytes_are_shared(
    client: KeyedClient,
) -> None:
    user_id, key = await new_user(client)
    client.key = key
    for name in ("a", "b"):
        assert (await put(client, name, b"same bytes")).status_code == 201
    assert await usage(client, user_id) == {"bytes": 20, "files": 2}


# -- declared sizes --------------------------------------------------------------


async def test_a_declared_length_over_the_quota_is_507_before_the_body_is_read(
    app: Quart, client: KeyedClient, overrides: dict[str, Any]
) -> None:
    user_id, key = await new_user(client, quota_bytes=1000)
    client.key = key
    for method, path, extra in (
        ("PUT", "/files/big", {}),
        ("POST", "/files", {"Content-Disposition": 'attachment; filename="big"'}),
    ):
        connection = as_http_connection(
            client.request(
                path,
                method=method,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(10**9),
                    **extra,
                },
            )
        )
        async with connection:
            await connection.send(b"x" * 10)  # the body never arrives in full
            async with asyncio.timeout(5):  # the body idle timeout is 30 s
                await connection.receive()
        assert connection.status_code == 507
        assert connection.headers is not None
        assert connection.headers["Content-Type"] == "application/problem+json"
    refused = await put(client, "over", b"x" * 1001)
    problem = await assert_refused(refused, "bytes")
    assert "1000 bytes" in problem["detail"] and problem["remaining"] == 1000
    assert (await put(client, "fits", b"x" * 1000)).status_code == 201
    await assert_nothing_left(app, overrides["STORAGE_DIR"], files=1)
    assert await usage(client, user_id) == {"bytes": 1000, "files": 1}


async def test_chunked_bodies_stop_when_they_pass_the_quota_and_leave_nothing(
    app: Quart, client: KeyedClient, overrides: dict[str, Any]
) -> None:
    user_id, key = await new_user(client, quota_bytes=100_000)
    client.key = key

    async def chunked(name: str, chunks: int) -> int:
        connection = as_http_connection(
            client.request(
                f"/files/{name}",
                method="PUT",
                headers={"Content-Type": "application/octet-stream"},
            )
        )
        async with connection:
            for _ in range(chunks):
                await connection.send(b"x" * 20_000)
            await connection.send_complete()
            await connection.receive()
        assert connection.status_code is not None
        return connection.status_code

    assert await chunked("over", 6) == 507
    await assert_nothing_left(app, overrides["STORAGE_DIR"])
    assert blob_files(overrides["STORAGE_DIR"]) == []
    assert await chunked("fits", 5) == 201
    assert await usage(client, user_id) == {"bytes": 100_000, "files": 1}
    assert await chunked("more", 1) == 507
    await assert_nothing_left(app, overrides["STORAGE_DIR"], files=1)


async def test_a_replace_counts_the_new_size_less_the_old(
    app: Quart, client: KeyedClient, overrides: dict[str, Any]
) -> None:
    user_id, key = await new_user(client, quota_bytes=1000, quota_files=1)
    client.key = key
    assert (await put(client, "doc", b"a" * 800)).status_code == 201
    # 900 - 800 fits in the 200 left; a second file does not fit the file count
    assert (await put(client, "doc", b"b" * 900)).status_code == 200
    await assert_refused(await put(client, "other", b"c"), "files")
    await assert_refused(await put(client, "doc", b"d" * 1001), "bytes")
    assert (await put(client, "doc", b"e" * 10)).status_code == 200
    assert await usage(client, user_id) == {"bytes": 10, "files": 1}
    await assert_nothing_left(app, overrides["STORAGE_DIR"], files=1)


async def test_the_file_count_is_a_quota_too(
    app: Quart, client: KeyedClient, overrides: dict[str, Any]
) -> None:
    user_id, key = await new_user(client, quota_files=2)
    client.key = key
    assert (await post_raw(client, "one", b"1")).status_code == 201
    # a form with two files when one is left: neither is stored
    form = await client.post(
        "/files",
        data=multipart(part("file", b"2", "two"), part("file", b"3", "three")),
        headers=multipart_headers(),
    )
    problem = await assert_refused(form, "files")
    assert problem["remaining"] == 1
    await assert_nothing_left(app, overrides["STORAGE_DIR"], files=1)
    assert (await post_raw(client, "two", b"2")).status_code == 201
    await assert_refused(await post_raw(client, "three", b"3"), "files")
    assert await usage(client, user_id) == {"bytes": 2, "files": 2}
    await assert_nothing_left(app, overrides["STORAGE_DIR"], files=2)


async def test_multipart_is_refused_early_past_the_framing_allowance_else_as_it_streams(
    overrides: dict[str, Any],
) -> None:
    app = create_app({**overrides, "MAX_MULTIPART_OVERHEAD_BYTES": 1000})
    async with app.test_app() as test_app:
        client = keyed(test_app.test_client())
        _, key = await new_user(client, quota_bytes=5000)
        client.key = key
        boundary = "quota-boundary"
        head = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=file; filename=a.bin\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

        # Content-Length past the room plus the allowance: refused unread
        connection = as_http_connection(
            client.request(
                "/files", method="POST", headers={**headers, "Content-Length": str(6001 + 1)}
            )
        )
        async with connection:
            await connection.send(head)
            async with asyncio.timeout(5):
                await connection.receive()
        assert connection.status_code == 507

        # within the allowance, but the file itself is too large: refused as it streams
        body = head + b"x" * 5500 + tail
        assert len(body) < 5000 + 1000
        await assert_refused(await client.post("/files", data=body, headers=headers), "bytes")
        body = head + b"x" * 5000 + tail
        assert (await client.post("/files", data=body, headers=headers)).status_code == 201
        await assert_nothing_left(app, overrides["STORAGE_DIR"], files=1)


# -- concurrency -------------------------------------------------------------------


async def test_twenty_concurrent_uploads_against_room_for_ten_store_exactly_ten(
    app: Quart, client: KeyedClient, overrides: dict[str, Any]
) -> None:
    user_id, key = await new_user(client, quota_bytes=10 * 1000)
    client.key = key
    responses = await asyncio.gather(
        *(post_raw(client, f"f{i}", bytes([i]) * 1000) for i in range(20))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * 10 + [507] * 10
    for response in responses:
        if response.status_code == 507:
            await assert_refused(response, "bytes")
    assert await usage(client, user_id) == {"bytes": 10 * 1000, "files": 10}
    await assert_nothing_left(app, overrides["STORAGE_DIR"], files=10)
    assert len(blob_files(overrides["STORAGE_DIR"])) == 10


async def test_concurrent_chunked_uploads_never_overshoot(
    app: Quart, client: KeyedClient, overrides: dict[str, Any]
) -> None:
    user_id, key = await new_user(client, quota_bytes=10 * 30_000, quota_files=10)
    client.key = key

    async def chunked(i: int) -> int:
        connection = as_http_connection(
            client.request(f"/files/c{i}", method="PUT", headers={"Content-Type": "text/plain"})
        )
        async with connection:
            for _ in range(3):
                await connection.send(bytes([65 + i]) * 10_000)
                await asyncio.sleep(0)
            await connection.send_complete()
            await connection.receive()
        assert connection.status_code is not None
        return connection.status_code

    statuses = await asyncio.gather(*(chunked(i) for i in range(20)))
    assert set(statuses) <= {201, 507}
    stored = await usage(client, user_id)
    assert stored["bytes"] <= 10 * 30_000 and stored["files"] <= 10
    assert stored["files"] == statuses.count(201) >= 1
    await assert_nothing_left(app, overrides["STORAGE_DIR"], files=stored["files"])


async def test_expired_reservations_are_ignored_and_swept(app: Quart, client: KeyedClient) -> None:
    user_id, key = await new_user(client, quota_bytes=1000)
    database = app_state(app).database
    async with database.sessionmaker() as session, database.writing(session):
        session.add(
            QuotaReservation(
                owner_id=user_id, bytes=1000, files=1, expires_at=utc_now() - timedelta(seconds=1)
            )
        )
    client.key = key
    assert (await put(client, "fits", b"x" * 1000)).status_code == 201
    assert await count_rows(app, QuotaReservation) == 1
    await sweep_once(app_state(app))
    assert await count_rows(app, QuotaReservation) == 0


async def test_a_live_reservation_holds_room_until_it_is_released(
    app: Quart, client: KeyedClient
) -> None:
    user_id, key = await new_user(client, quota_bytes=1000)
    quotas = app_state(app).quotas
    reservation = quotas.reservation(user_id)
    await reservation.open(600)
    client.key = key
    problem = await assert_refused(await put(client, "a", b"x" * 500), "bytes")
    assert problem["remaining"] == 400
    await reservation.cancel()
    assert (await put(client, "a", b"x" * 500)).status_code == 201


# -- resumable uploads -------------------------------------------------------------


async def create_upload(client: KeyedClient, **headers: str) -> Response:
    return await client.post("/uploads", headers={**TUS, **headers})


async def test_tus_upload_length_reserves_room_at_creation(
    app: Quart, client: KeyedClient, overrides: dict[str, Any]
) -> None:
    user_id, key = await new_user(client, quota_bytes=1000, quota_files=3)
    client.key = key
    await assert_refused(await create_upload(client, **{"Upload-Length": "1001"}), "bytes")
    assert await count_rows(app, Upload) == 0
    assert partial_files(overrides["STORAGE_DIR"]) == []
    first = await create_upload(client, **{"Upload-Length": "600"})
    assert first.status_code == 201
    # the first holds 600 until it ends: 500 more do not fit
    await assert_refused(await create_upload(client, **{"Upload-Length": "500"}), "bytes")
    # with its first chunk: refused before it is read
    with_body = await client.post(
        "/uploads",
        data=b"x" * 10,
        headers={
            **TUS,
            "Upload-Length": "500",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    await assert_refused(with_body, "bytes")
    assert await count_rows(app, Upload) == 1
    # completing it turns the reservation into the file: still 400 left
    location = first.headers["Location"]
    done = await client.patch(
        location,
        data=b"y" * 600,
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert done.status_code == 204
    assert await usage(client, user_id) == {"bytes": 600, "files": 1}
    await assert_refused(await create_upload(client, **{"Upload-Length": "401"}), "bytes")
    second = await create_upload(client, **{"Upload-Length": "400"})
    assert second.status_code == 201
    # terminated, its room comes back
    assert (await client.delete(second.headers["Location"], headers=TUS)).status_code == 204
    assert (await create_upload(client, **{"Upload-Length": "400"})).status_code == 201
    # the file count: one file and one upload in flight of three
    assert (await create_upload(client, **{"Upload-Length": "0"})).status_code == 201
    await assert_refused(await create_upload(client, **{"Upload-Length": "0"}), "files")


async def test_tus_expired_uploads_give_their_room_back(app: Quart, client: KeyedClient) -> None:
    _, key = await new_user(client, quota_bytes=1000)
    client.key = key
    assert (await create_upload(client, **{"Upload-Length": "1000"})).status_code == 201
    await assert_refused(await create_upload(client, **{"Upload-Length": "1"}), "bytes")
    database = app_state(app).database
    async with database.sessionmaker() as session, database.writing(session):
        for upload in await session.scalars(select(Upload)):
            upload.expires_at = utc_now() - timedelta(seconds=1)
    assert (await create_upload(client, **{"Upload-Length": "1000"})).status_code == 201


async def test_a_deferred_length_is_held_to_a_limit_set_a_moment_ago_elsewhere(
    overrides: dict[str, Any],
) -> None:
    """The worker's cached limits (KEY_CACHE_SECONDS) say the owner has
    none, and another worker has just set one: a PATCH that sets a deferred
    length, or brings bytes, is still held to it (a deferred upload reads
    its owner's quota itself)."""
    app = create_app({**overrides, "KEY_CACHE_SECONDS": 60.0})
    async with app.test_app() as test_app:
        client = keyed(test_app.test_client())
        user_id, key = await new_user(client, "deferred")
        client.key = key
        assert (await put(client, "first", b"x" * 100)).status_code == 201  # limits cached
        for sizing in ({"Upload-Length": "1000"}, {}):
            created = await create_upload(client, **{"Upload-Defer-Length": "1"})
            assert created.status_code == 201
            await set_quota_elsewhere(app, user_id, 150)
            answer = await client.patch(
                created.headers["Location"],
                data=b"y" * 60,
                headers={
                    **TUS,
                    "Upload-Offset": "0",
                    "Content-Type": "application/offset+octet-stream",
                    **sizing,
                },
            )
            await assert_refused(answer, "bytes")
            await set_quota_elsewhere(app, user_id, None)


async def test_tus_deferred_length_is_checked_when_a_patch_sets_it_or_bytes_pass(
    app: Quart, client: KeyedClient
) -> None:
    user_id, key = await new_user(client, quota_bytes=1000)
    client.key = key
    created = await create_upload(client, **{"Upload-Defer-Length": "1"})
    assert created.status_code == 201
    location = created.headers["Location"]

    async def patch(offset: int, data: bytes, **headers: str) -> Response:
        return await client.patch(
            location,
            data=data,
            headers={
                **TUS,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
                **headers,
            },
        )

    assert (await patch(0, b"a" * 300)).status_code == 204
    # bytes past the room, length still deferred: refused, none of them kept
    problem = await assert_refused(await patch(300, b"b" * 701), "bytes")
    assert "1000 bytes" in problem["detail"] and problem["remaining"] == 700
    head = await client.head(location, headers=TUS)
    assert head.headers["Upload-Offset"] == "300"
    # a length that would pass the quota: refused before the body is read
    problem = await assert_refused(await patch(300, b"c", **{"Upload-Length": "1001"}), "bytes")
    assert problem["remaining"] == 1000
    head = await client.head(location, headers=TUS)
    assert head.headers["Upload-Offset"] == "300"
    assert head.headers["Upload-Defer-Length"] == "1"
    # a length that fits is taken, and then holds its room
    assert (await patch(300, b"d" * 100, **{"Upload-Length": "900"})).status_code == 204
    await assert_refused(await create_upload(client, **{"Upload-Length": "101"}), "bytes")
    assert (await patch(400, b"e" * 500)).status_code == 204
    assert await usage(client, user_id) == {"bytes": 900, "files": 1}
    assert await count_rows(app, File) == 1


# -- room given back, and checked again where it may have changed --------------


async def test_uploads_that_fail_give_their_room_back(
    overrides: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app({**overrides, "MAX_UPLOAD_BYTES": 50_000})
    async with app.test_app() as test_app:
        client = keyed(test_app.test_client())
        _, key = await new_user(client, quota_bytes=10**6, quota_files=5)
        client.key = key
        connection = as_http_connection(client.request("/files/big", method="PUT"))
        async with connection:
            for _ in range(6):
                await connection.send(b"x" * 10_000)
            await connection.send_complete()
            await connection.receive()
        assert connection.status_code == 413
        malformed = await client.post(
            "/files", data=b"--nope\r\n", headers={**multipart_headers(), "Content-Length": "8"}
        )
        assert malformed.status_code == 400
        await assert_nothing_left(app, overrides["STORAGE_DIR"])

        # the group commit fails: the batch gives its files' room back
        async def unwritable(sha256s: object) -> set[str]:
            raise StorageUnwritable("read-only")

        monkeypatch.setattr(app_state(app).store, "stored", unwritable)
        failed = await post_raw(client, "a", b"a" * 100)
        assert failed.status_code == 503
        with_key = await client.post(
            "/files",
            data=b"b",
            headers={
                "Content-Disposition": 'attachment; filename="b"',
                "Content-Length": "1",
                "Idempotency-Key": "k-1",
            },
        )
        assert with_key.status_code == 503
        await assert_nothing_left(app, overrides["STORAGE_DIR"])


async def test_every_commit_path_turns_the_reservation_into_files(
    app: Quart, client: KeyedClient, overrides: dict[str, Any]
) -> None:
    user_id, key = await new_user(client, quota_bytes=1000, quota_files=4)
    client.key = key
    idempotent = await client.post(
        "/files",
        data=b"x" * 100,
        headers={
            "Content-Disposition": 'attachment; filename="once"',
            "Content-Length": "100",
            "Idempotency-Key": "once",
        },
    )
    assert idempotent.status_code == 201
    batch = await client.post(
        "/files",
        data=multipart(part("file", b"y" * 200, "one"), part("file", b"z" * 300, "two")),
        headers=multipart_headers(),
    )
    assert batch.status_code == 201
    assert (await put(client, "three", b"w" * 400)).status_code == 201
    assert await usage(client, user_id) == {"bytes": 1000, "files": 4}
    await assert_nothing_left(app, overrides["STORAGE_DIR"], files=4)
    await assert_refused(await put(client, "four", b""), "files")


async def test_a_replace_is_checked_again_when_its_file_went_meanwhile(
    app: Quart, client: KeyedClient, overrides: dict[str, Any]
) -> None:
    _, key = await new_user(client, quota_bytes=1000)
    client.key = key
    assert (await put(client, "doc", b"a" * 800)).status_code == 201
    # A chunked replace of 900 reserves against freeing the 800...
    connection = as_http_connection(
        client.request("/files/doc", method="PUT", headers={"Content-Type": "text/plain"})
    )
    async with connection:
        await connection.send(b"b" * 450)
        await asyncio.sleep(0.2)
        # ...but the file is deleted and its room used before the replace commits
        assert (await client.delete("/files/doc")).status_code == 204
        assert (await put(client, "other", b"c" * 700)).status_code == 201
        await connection.send(b"b" * 450)
        await connection.send_complete()
        await connection.receive()
    assert connection.status_code == 507
    assert (await client.get("/files/doc")).status_code == 404
    await assert_nothing_left(app, overrides["STORAGE_DIR"], files=1)


async def test_an_admin_replacing_a_users_file_counts_against_that_user(
    client: KeyedClient,
) -> None:
    user_id, key = await new_user(client, quota_bytes=1000)
    client.key = key
    assert (await put(client, "doc", b"a" * 800)).status_code == 201
    client.key = TEST_ADMIN_KEY
    await assert_refused(await put(client, "doc", b"b" * 1001), "bytes")
    assert (await put(client, "doc", b"b" * 1000)).status_code == 200
    assert await usage(client, user_id) == {"bytes": 1000, "files": 1}


async def test_a_reservation_swept_under_a_running_upload_refuses_it(
    app: Quart, client: KeyedClient
) -> None:
    user_id, _ = await new_user(client, quota_bytes=10 * 1024**2)
    reservation = app_state(app).quotas.reservation(user_id)
    await reservation.open(None)
    await reservation.take(bytes=100)
    database = app_state(app).database
    async with database.sessionmaker() as session, database.writing(session):
        await session.execute(delete(QuotaReservation))
    with pytest.raises(QuotaExceeded):
        await reservation.take(bytes=2 * 1024**2)


async def test_taking_room_locks_the_users_row_on_postgresql(
    app: Quart, client: KeyedClient
) -> None:
    user_id, _ = await new_user(client)
    seen: list[str] = []

    class Recording:
        def __init__(self, session: Any) -> None:
            self.session = session

        async def execute(self, statement: Any) -> Any:
            dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
            seen.append(str(statement.compile(dialect=dialect)))
            return await self.session.execute(statement)

    async with app_state(app).database.sessionmaker() as session:
        await app_state(app).quotas.limits(Recording(session), user_id, lock=True)  # type: ignore[arg-type]
    assert seen and seen[0].rstrip().endswith("FOR UPDATE")
