"""Authentication itself: hostile Authorization values, expired and revoked
keys, the bound on failed attempts, public views, and Idempotency-Key
records per account (issue 14, items 2, 7 and 11)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import update

from devtools.access_world import (
    ADMIN,
    BAD,
    NONE,
    OTHER,
    OWNER,
    TUS,
    World,
    assert_unauthorized,
    exchange,
    make_world,
)
from devtools.app_settings import temp_app_settings
from devtools.auth import TEST_ADMIN_KEY, KeyedClient
from quart_app import create_app
from quart_app.db.models import ApiKey, File, Upload, utc_now
from quart_app.state import app_state

RAW = {"Content-Type": "application/octet-stream", "Content-Disposition": "attachment; filename=a"}


@asynccontextmanager
async def serving(overrides: dict[str, Any], **settings: Any) -> AsyncIterator[World]:
    app = create_app({**overrides, "UPLOAD_SWEEP_SECONDS": 3600, **settings})
    async with app.test_app():
        yield await make_world(app, KeyedClient(app), Path(overrides["STORAGE_DIR"]))


# Tests that change nothing but what they check share one app (each compares
# what is held before and after); those that need other settings make theirs.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """Alice, Bob and their resources; no failure limit (many bad keys here)."""
    overrides = temp_app_settings(tmp_path_factory.mktemp("authentication"))
    async with serving(overrides, AUTH_FAILURES_PER_MINUTE=0) as world:
        yield world


TOO_LARGE = None


def hostile_values(key: str) -> list[tuple[str, bool | None]]:
    """Authorization values a client can send through an HTTP parser, and
    whether the answer names the token invalid (``error="invalid_token"``:
    a Bearer credential that is not a key) or only challenges (no Bearer
    credential at all); TOO_LARGE: the 16 KiB head limit answers 431 first."""
    return [
        ("Bearer " + "a" * 100_000, TOO_LARGE),
        ("Bearer " + "a" * 15_000, True),
        ("Bearer " + key + "a" * 15_000, True),
        ("Bearer qa_é" + key[4:], True),
        ("Bearer " + key + "€", True),
        ("Bearer", True),
        ("Bearer ", True),
        ("Bearer  x", True),
        ("Bearer x y", True),
        ("Bearer " + " " * 5000, True),
        ("Bearer" + " " * 5000 + "qa_not-a-key", True),
        (" " * 5000, False),
        ("", False),
        ("Basic dXNlcjpwYXNz", False),
        ("Token " + key, False),
        ("Bearer\t" + key, False),
        ("Bearer " + key + " junk", True),
        ("Bearer " + key + "junk", True),
        ("Bearer " + key + "=", True),
        ("Bearer " + key + ",", True),
        ("Bearer " + key + ", Bearer " + key, True),
        ("Bearer " + key[:-1], True),
        ("Bearer " + key.upper(), True),
        ("Bearer " + TEST_ADMIN_KEY + "x", True),
        ("Bearer " + TEST_ADMIN_KEY[:-1], True),
    ]


async def test_hostile_authorization_values_are_401_and_store_nothing(world: World) -> None:
    """Each on a read and on an upload: a 401 problem with the challenge,
    never a 500, and not a row or a byte stored."""
    key = world.keys[OWNER]
    assert key is not None
    before = await world.held()
    for value, invalid in hostile_values(key):
        for method, body in (("GET", b""), ("POST", b"upload")):
            answer = await exchange(
                world.client, method, "/files", None, {**RAW, "Authorization": value}, body
            )
            try:
                if invalid is TOO_LARGE:
                    answer.assert_problem(431, "headers-too-large")
                else:
                    assert_unauthorized(answer, invalid_token=invalid)
            except AssertionError as error:
                raise AssertionError(f"{method} with {value[:60]!r}: {error}") from None
    assert await world.held() == before


async def test_hostile_octets_below_the_http_parser_are_401(world: World) -> None:
    """What an HTTP/1.1 or HTTP/2 parser passes on as a header value (bytes
    over 0x7f, control characters other than CR, LF and NUL, which h11 and h2
    refuse before the app: tests/e2e/test_hostile_keys.py), as raw ASGI
    headers; and two Authorization fields, even two good keys."""
    key = (world.keys[OWNER] or "").encode()
    values: list[list[bytes]] = [
        [b"Bearer \xff\xfe"],
        [b"Bearer " + key[:-2] + b"\xc3\xa9"],
        [b"Bearer " + key + b"\x01"],
        [b"Bearer " + key + b"\x7f"],
        [b"Bearer \x1b[31m" + key],
        [b"\xff\xfe " + key],
        [b"Bearer " + key, b"Bearer " + key],
        [b"Bearer " + key, b"Bearer qa_x"],
        [b"Bearer qa_x", b"Bearer " + key],
        [b"Bearer " + TEST_ADMIN_KEY.encode(), b"Bearer " + TEST_ADMIN_KEY.encode()],
    ]
    before = await world.held()
    for fields in values:
        headers = [(b"host", b"localhost"), *((b"authorization", v) for v in fields)]
        for method in ("GET", "DELETE"):
            answer = await exchange(
                world.client,
                method,
                f"/files/{world.file}",
                None,
                scope_base={"headers": headers},
            )
            assert answer.status == 401, (fields, answer)
            assert answer.problem()["type"] == "urn:quart-app:problem:unauthorized"
            assert answer.headers["WWW-Authenticate"].startswith("Bearer "), fields
    assert await world.held() == before


async def test_a_scheme_in_any_case_and_spaces_before_the_key_are_accepted(world: World) -> None:
    """RFC 7235: the scheme is case-insensitive; RFC 6750: ``Bearer 1*SP
    b64token``."""
    key = world.keys[OWNER]
    for value in (f"bearer {key}", f"BEARER {key}", f"Bearer     {key}", f"  Bearer {key}  "):
        answer = await exchange(world.client, "GET", "/files", None, {"Authorization": value})
        assert answer.status == 200, (value, answer)


async def expire(world: World, key_id: str, **values: Any) -> None:
    async with app_state(world.app).database.sessionmaker() as session, session.begin():
        await session.execute(update(ApiKey).where(ApiKey.id == key_id).values(**values))


async def test_a_revoked_or_expired_key_is_401_invalid_token(overrides: dict[str, Any]) -> None:
    # A worker trusts what it read about a key for KEY_CACHE_SECONDS: here
    # (almost) not at all, so the change shows at once.
    async with serving(overrides, KEY_CACHE_SECONDS=0.001) as world:
        for how in ("revoked", "expired"):
            key_id, secret = await world.new_key(world.alice, "read", "write")
            assert (await exchange(world.client, "GET", "/files", secret)).status == 200
            if how == "revoked":
                path = f"/users/{world.alice}/keys/{key_id}"
                answer = await exchange(world.client, "DELETE", path, secret)
                assert answer.status == 204, answer
            else:
                await expire(world, key_id, expires_at=utc_now() - timedelta(seconds=1))
            before = await world.held()
            for method, path, body in (("GET", "/files", b""), ("POST", "/files", b"x")):
                answer = await exchange(world.client, method, path, secret, RAW, body)
                assert_unauthorized(answer, invalid_token=True)
            assert await world.held() == before, how


async def test_public_views_answer_without_a_key_even_a_bad_one(world: World) -> None:
    for credential in (NONE, BAD):
        for method, path, headers in (
            ("GET", "/healthz", {}),
            ("GET", "/readyz", {}),
            ("GET", "/openapi.json", {}),
            ("OPTIONS", "/uploads", TUS),
            ("OPTIONS", "/files", {}),
        ):
            answer = await world.call(credential, method, path, headers)
            assert answer.status in (200, 204), (credential, method, path, answer)


async def test_repeated_bad_keys_get_429_while_known_good_keys_still_work(
    overrides: dict[str, Any],
) -> None:
    """After AUTH_FAILURES_PER_MINUTE bad keys from one address, that
    address gets 429 with Retry-After for any key the worker does not
    already know to be good (no look-up is made for it): a key it used a
    moment ago, and the environment's admin key, still work. Requests with
    no key do not count; other addresses are not held back."""
    async with serving(overrides, AUTH_FAILURES_PER_MINUTE=3) as world:
        _, unseen = await world.new_key(world.bob, "read")
        here = {"client": ("192.0.2.7", 40000)}
        elsewhere = {"client": ("192.0.2.8", 40000)}

        async def send(key: str | None, scope: dict[str, Any] = here) -> Any:
            headers = None if key is None else {"Authorization": f"Bearer {key}"}
            return await exchange(world.client, "GET", "/files", None, headers, scope_base=scope)

        assert (await send(world.keys[OWNER])).status == 200
        for _ in range(5):
            assert_unauthorized(await send(None), invalid_token=False)
        statuses = [(await send(bad)).status for bad in ("qa_x", "!!", "qa_" + "y" * 43)]
        assert statuses == [401, 401, 429]
        for bad in ("qa_x", "Bearer", world.keys[BAD]):
            blocked = await send(bad)
            blocked.assert_problem(429, "too-many-failed-authentications")
            assert 1 <= int(blocked.headers["Retry-After"]) <= 60
        assert (await send(unseen)).status == 429
        assert (await send(world.keys[OWNER])).status == 200
        assert (await send(TEST_ADMIN_KEY)).status == 200
        assert_unauthorized(await send("qa_x", elsewhere), invalid_token=True)
        assert (await send(unseen, elsewhere)).status == 200


@pytest.mark.parametrize(
    ("path", "model", "headers", "body"),
    [
        ("/files", File, RAW, b"same bytes"),
        ("/uploads", Upload, {**TUS, "Upload-Length": "10"}, b""),
    ],
    ids=["files", "uploads"],
)
async def test_idempotency_keys_belong_to_each_account(
    world: World, path: str, model: type[File] | type[Upload], headers: dict[str, str], body: bytes
) -> None:
    """Alice and Bob (and an admin) use the same Idempotency-Key on the same
    create: each gets a resource of their own, and each retry replays its own."""
    headers = {**headers, "Idempotency-Key": "same-key" + path.replace("/", "-")}
    first = {}
    for credential in (OWNER, OTHER, ADMIN):
        answer = await world.call(credential, "POST", path, headers, body)
        assert answer.status == 201, (credential, answer)
        assert "Idempotent-Replayed" not in answer.headers
        first[credential] = answer
    assert len({a.headers["Location"] for a in first.values()}) == 3
    for credential, owner in ((OWNER, world.alice), (OTHER, world.bob), (ADMIN, 0)):
        made = first[credential].headers["Location"].rsplit("/", 1)[1]
        assert await world.owners(model, made) == [owner]
    before = await world.held()
    for credential in (OTHER, OWNER, ADMIN):
        again = await world.call(credential, "POST", path, headers, body)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert (again.status, again.body) == (201, first[credential].body), credential
        assert again.headers["Location"] == first[credential].headers["Location"]
    # Another payload under Bob's key is Bob's conflict alone.
    other = await world.call(OTHER, "POST", path, headers, body + b"!")
    other.assert_problem(422, "idempotency-key-reused")
    assert await world.held() == before


async def test_idempotency_key_on_a_sign_up_is_refused(overrides: dict[str, Any]) -> None:
    """A sign-up's answer holds the new user's key: storing it for a replay
    would keep a secret in clear. Without any key there is no account for
    the record either."""
    async with serving(overrides, OPEN_SIGNUP=True) as world:
        before = await world.held()
        for credential in (NONE, OWNER):
            body = json.dumps({"name": "Eve", "email": "eve@example.com"}).encode()
            headers = {"Content-Type": "application/json", "Idempotency-Key": "signup"}
            answer = await world.call(credential, "POST", "/users", headers, body)
            answer.assert_problem(400, "validation-failed")
            assert answer.problem()["errors"][0]["field"] == "Idempotency-Key"
        assert await world.held() == before
        headers = {"Content-Type": "application/json"}
        # A bad key is not taken for no key: open sign-up is for requests
        # without an Authorization field, and for POST /users alone.
        assert_unauthorized(
            await world.call(BAD, "POST", "/users", headers, body), invalid_token=True
        )
        assert_unauthorized(await world.call(NONE, "GET", "/users"), invalid_token=False)
        assert await world.held() == before
        signed_up = await world.call(NONE, "POST", "/users", headers, body)
        assert signed_up.status == 201, signed_up
        secret = signed_up.json()["key"]["secret"]
        mine = await exchange(world.client, "GET", "/users", secret)
        assert [u["email"] for u in mine.json()["items"]] == ["eve@example.com"]
