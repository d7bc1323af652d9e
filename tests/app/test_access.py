"""Who may do what, on every route and method (issue 14, items 2 and 11).

For each route and method, the matrix no key / bad key / read key / write
key / other owner's key / admin key: the status, the problem type, the
``WWW-Authenticate`` challenge where one is due, and that a refused request
stored, changed and removed nothing (every row, every stored file). Another
owner's resource answers exactly, byte for byte, what an id nobody has
answers: no existence leak.
"""

# The table of routes keeps one route to a line, however long.
# ruff: noqa: E501

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio

from devtools.access_world import (
    ADMIN,
    BAD,
    CREDENTIALS,
    NONE,
    OCTETS,
    OTHER,
    OWNER,
    READ,
    TUS,
    WRITE,
    Answer,
    World,
    assert_forbidden,
    assert_unauthorized,
    exchange,
    make_world,
)
from devtools.app_settings import temp_app_settings
from devtools.auth import KeyedClient
from devtools.form_data import multipart, multipart_headers, part
from quart_app import create_app
from quart_app.db.models import File, Upload, utc_now
from quart_app.state import app_state

JSON = {"Content-Type": "application/json"}


# One app and one world for the whole matrix (a fresh app per route would
# cost most of a second each): every request is checked against what was
# held just before it, and each route that consumes Alice's resource makes
# it again, so the cases do not depend on each other or on their order.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    settings = temp_app_settings(tmp_path_factory.mktemp("access"))
    # No background sweep during the test (it would note key use, a change),
    # and no failure limit: the matrix sends many bad keys on purpose.
    app = create_app({**settings, "UPLOAD_SWEEP_SECONDS": 3600, "AUTH_FAILURES_PER_MINUTE": 0})
    async with app.test_app():
        yield await make_world(app, KeyedClient(app), settings["STORAGE_DIR"])


# Ids nobody has, in place of Alice's: what another owner must not tell apart.
NOBODYS_IDS = {
    "alice": 999_999,
    "spare_key": "key_nosuchkey0000",
    "file": "no-such-file",
    "batch": "no-such-batch",
    "upload": "no-such-upload",
}


@dataclass(frozen=True)
class Route:
    """A route and method, aimed at Alice's resource: ``template`` names
    World attributes (``/files/{file}``).

    ``scope``: what a key needs (``admin``: POST /users). ``ok``: the status
    for a key that may. ``owned``: the URL names Alice's resource, so
    another owner's key must get exactly the answer for NOBODYS_IDS;
    otherwise ``other`` is that key's status. ``renew``: makes Alice's
    resource again after a success consumed or changed it."""

    method: str
    template: str
    scope: str
    ok: int
    owned: bool = True
    other: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    renew: Callable[[World, str], Awaitable[None]] | None = None

    def path(self, world: World) -> str:
        return self.template.format(**vars(world))

    def nobodys(self, world: World) -> str:
        return self.template.format(**{**vars(world), **NOBODYS_IDS})

    @property
    def changes(self) -> bool:
        return self.method not in ("GET", "HEAD")

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


def fields(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(headers.items())


NEW_USER = json.dumps({"name": "Carol", "email": "carol@example.com"}).encode()


async def renew_file(world: World, credential: str) -> None:
    await world.put_file(OWNER, world.file, b"alice's bytes")


async def renew_upload(world: World, credential: str) -> None:
    await world.new_upload()


async def renew_spare_key(world: World, credential: str) -> None:
    await world.new_spare_key()


async def remove_others_file(world: World, credential: str) -> None:
    """Bob's PUT made a file of his own with Alice's file's id: remove it
    (and check that Alice's is untouched)."""
    if credential == OTHER:
        assert await world.owners(File, world.file) == [world.alice, world.bob]
        answer = await world.call(OTHER, "DELETE", f"/files/{world.file}")
        assert answer.status == 204, answer
    assert await world.owners(File, world.file) == [world.alice]
    # Alice's own PUT (or an admin's) replaced her bytes: put them back, so
    # that a test run after this one, in whatever order, finds them.
    await renew_file(world, credential)


def reads(template: str, owned: bool = True, other: int | None = None) -> list[Route]:
    """GET and HEAD on a route."""
    headers = fields(TUS) if template.startswith("/uploads") else ()
    return [
        Route(method, template, "read", 200, owned=owned, other=other, headers=headers)
        for method in ("GET", "HEAD")
    ]


ROUTES = [
    Route("POST", "/users", "admin", 201, False, 403, fields(JSON), NEW_USER),
    *reads("/users", owned=False, other=200),
    *reads("/users/{alice}"),
    Route("PATCH", "/users/{alice}", "admin", 200, headers=fields(JSON), body=b'{"quota_files": 50}'),
    Route("POST", "/users/{alice}/keys", "write", 201, headers=fields(JSON), body=b'{"scopes": ["write"]}'),
    *reads("/users/{alice}/keys"),
    *reads("/users/{alice}/keys/{spare_key}"),
    Route("DELETE", "/users/{alice}/keys/{spare_key}", "write", 204, renew=renew_spare_key),
    Route("POST", "/files", "write", 201, False, 201, fields(multipart_headers()), multipart(part("file", b"new", "new.txt"))),
    *reads("/files", owned=False, other=200),
    *reads("/files/{file}"),
    # Another owner's PUT makes a file of their own under the same id (ids
    # are unique per owner), as it would for an id nobody has.
    Route("PUT", "/files/{file}", "write", 200, False, 201, body=b"new", renew=remove_others_file),
    Route("DELETE", "/files/{file}", "write", 204, renew=renew_file),
    *reads("/files/{file}/content"),
    *reads("/batches/{batch}"),
    Route("POST", "/uploads", "write", 201, False, 201, fields({**TUS, "Upload-Length": "5"})),
    *reads("/uploads/{upload}"),
    Route("PATCH", "/uploads/{upload}", "write", 204, headers=fields({**OCTETS, "Upload-Offset": "3"}), body=b"def", renew=renew_upload),
    Route("DELETE", "/uploads/{upload}", "write", 204, headers=fields(TUS), renew=renew_upload),
    *(Route(method, "/metrics", "admin", 200, False, 403) for method in ("GET", "HEAD")),
]  # fmt: skip


def allowed(route: Route, credential: str) -> bool:
    if credential in (NONE, BAD):
        return False
    if credential == ADMIN:
        return True
    if route.scope == "admin":
        return False
    scopes = {READ: {"read"}, WRITE: {"write"}}.get(credential, {"read", "write"})
    return route.scope in scopes


async def check_one(world: World, route: Route, credential: str) -> None:
    path = route.path(world)
    headers = dict(route.headers)
    body = route.body
    before = await world.held()
    answer = await world.call(credential, route.method, path, headers, body)
    unchanged = not route.changes or not (200 <= answer.status < 300)
    if unchanged:
        assert await world.held() == before, f"{route} with {credential} changed what is held"
    if credential in (NONE, BAD):
        assert_unauthorized(answer, invalid_token=credential == BAD)
    elif not allowed(route, credential):
        assert_forbidden(answer)
    elif credential == OTHER and route.owned:
        nobody = await world.call(credential, route.method, route.nobodys(world), headers, body)
        answer.assert_problem(404, "not-found")
        assert answer.comparable() == nobody.comparable()
    elif credential == OTHER:
        assert answer.status == route.other, answer
        if route.other == 403:
            assert_forbidden(answer)
    else:
        assert answer.status == route.ok, answer
    if route.renew is not None and route.changes and 200 <= answer.status < 300:
        await route.renew(world, credential)


@pytest.mark.parametrize("route", ROUTES, ids=str)
async def test_every_route_answers_each_credential_as_it_should(world: World, route: Route) -> None:
    # The refusals first: each must leave everything as it was.
    for credential in (NONE, BAD, READ, WRITE, OTHER, OWNER, ADMIN):
        try:
            await check_one(world, route, credential)
        except AssertionError as error:
            raise AssertionError(f"{route} with the {credential}: {error}") from None


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
PATHS = [
    "/users",
    "/users/{alice}",
    "/users/{alice}/keys",
    "/users/{alice}/keys/{spare_key}",
    "/files",
    "/files/{file}",
    "/files/{file}/content",
    "/batches/{batch}",
    "/uploads",
    "/uploads/{upload}",
    "/metrics",
]


async def test_a_method_a_route_lacks_is_the_same_405_for_every_key(world: World) -> None:
    """Authentication answers before routing: without a usable key a method
    a URL lacks is a 401 like any other request (strangers learn nothing of
    the URL map); with any valid key it is a 405 with Allow, the same bytes
    for every key, for Alice's ids and for ids nobody has, changing nothing."""
    routed = {(r.method, r.template) for r in ROUTES}
    assert len(routed) == len(ROUTES)
    unrouted = [(m, t) for t in PATHS for m in METHODS if (m, t) not in routed]
    assert len(unrouted) == len(PATHS) * len(METHODS) - len(ROUTES)
    before = await world.held()
    for method, template in unrouted:
        nobody = template.format(**{**vars(world), **NOBODYS_IDS})
        first = await world.call(READ, method, nobody, TUS)
        first.assert_problem(405, "method-not-allowed")
        assert "Allow" in first.headers
        for credential in CREDENTIALS:
            answer = await world.call(credential, method, template.format(**vars(world)), TUS)
            if credential in (NONE, BAD):
                answer.assert_problem(401, "unauthorized")
                continue
            assert answer.comparable() == first.comparable(), f"{method} {template}: {credential}"
    assert await world.held() == before


async def owners_after(world: World, answer: Answer, model: type[File] | type[Upload]) -> list[int]:
    assert answer.status == 201, answer
    return await world.owners(model, answer.headers["Location"].rsplit("/", 1)[1])


async def test_what_a_key_creates_belongs_to_its_account(world: World) -> None:
    """A file or upload is the key's user's; the environment's admin key
    acts as the operator account (user 0)."""
    for credential, owner in ((WRITE, world.alice), (OTHER, world.bob), (ADMIN, 0)):
        made = await world.call(
            credential, "POST", "/files", {"Content-Disposition": "attachment; filename=a"}, b"a"
        )
        assert await owners_after(world, made, File) == [owner], credential
        made = await world.call(credential, "POST", "/uploads", {**TUS, "Upload-Length": "1"})
        assert await owners_after(world, made, Upload) == [owner], credential


async def test_a_list_shows_a_key_its_own_account_and_an_admin_everyone(world: World) -> None:
    async def ids(credential: str, path: str, key: str) -> set[Any]:
        answer = await world.call(credential, "GET", f"{path}?limit=100")
        assert answer.status == 200, answer
        page = answer.json()
        assert page["next"] is None
        return {item[key] for item in page["items"]}

    alices = await ids(OWNER, "/files", "id")
    bobs = await ids(OTHER, "/files", "id")
    assert {world.file, "1.txt"} <= {*alices} | {"1.txt"} and "bob-file" not in alices
    assert "bob-file" in bobs and world.file not in bobs
    assert alices | bobs <= await ids(ADMIN, "/files", "id")
    assert await ids(READ, "/files", "id") == alices
    assert await ids(OWNER, "/users", "id") == {world.alice}
    assert await ids(OTHER, "/users", "id") == {world.bob}
    assert {world.alice, world.bob} <= await ids(ADMIN, "/users", "id")


async def test_an_admin_reads_and_manages_anothers_resources(world: World) -> None:
    content = await world.call(ADMIN, "GET", f"/files/{world.file}/content")
    assert (content.status, content.body) == (200, b"alice's bytes")
    batch = await world.call(ADMIN, "GET", f"/batches/{world.batch}")
    assert [f["filename"] for f in batch.json()["files"]] == ["1.txt", "2.txt"]
    upload = await world.call(ADMIN, "HEAD", f"/uploads/{world.upload}", TUS)
    assert upload.headers["Upload-Offset"] == "3"
    keys = await world.call(ADMIN, "GET", f"/users/{world.alice}/keys")
    assert world.spare_key in {k["id"] for k in keys.json()["items"]}
    assert all("secret" not in k for k in keys.json()["items"])
    # An admin's PUT replaces Alice's file; it stays hers.
    replaced = await world.call(ADMIN, "PUT", f"/files/{world.file}", {}, b"by the admin")
    assert replaced.status == 200, replaced
    assert await world.owners(File, world.file) == [world.alice]
    mine = await world.call(OWNER, "GET", f"/files/{world.file}/content")
    assert mine.body == b"by the admin"
    await renew_file(world, OWNER)


async def test_a_key_grants_no_scope_it_lacks(world: World) -> None:
    """A key makes keys with its own scopes at most: no admin key from a
    user's key, no read key from a write-only key."""
    for credential, scopes in ((OWNER, ["admin"]), (OWNER, ["read", "admin"]), (WRITE, ["read"])):
        before = await world.held()
        answer = await world.call(
            credential,
            "POST",
            f"/users/{world.alice}/keys",
            JSON,
            json.dumps({"scopes": scopes}).encode(),
        )
        assert_forbidden(answer)
        assert await world.held() == before, (credential, scopes)
    # An admin may give a user an admin key, which then reaches everyone's.
    made = await world.call(
        ADMIN, "POST", f"/users/{world.alice}/keys", JSON, b'{"scopes": ["read", "admin"]}'
    )
    assert made.status == 201, made
    secret = made.json()["secret"]
    bobs = await exchange(world.client, "GET", "/files/bob-file", secret)
    assert bobs.status == 200, bobs


async def test_anothers_key_id_under_ones_own_user_is_a_key_nobody_has(world: World) -> None:
    """Bob naming Alice's key under his own user, or an admin naming it under
    Bob: the same 404 as a key id nobody has, and nothing revoked."""
    before = await world.held()
    for credential in (OTHER, ADMIN):
        for method in ("GET", "HEAD", "DELETE"):
            theirs = await world.call(
                credential, method, f"/users/{world.bob}/keys/{world.spare_key}"
            )
            nobody = await world.call(credential, method, f"/users/{world.bob}/keys/key_nosuch")
            theirs.assert_problem(404, "not-found")
            assert theirs.comparable() == nobody.comparable(), (credential, method)
    assert await world.held() == before


async def test_anothers_expired_upload_is_404_like_one_nobody_has(world: World) -> None:
    """Only the owner (or an admin) learns that an upload expired (410)."""
    await world.new_upload()
    async with app_state(world.app).database.sessionmaker() as session, session.begin():
        upload = await session.get(Upload, world.upload)
        assert upload is not None
        upload.expires_at = utc_now() - timedelta(seconds=1)
    path = f"/uploads/{world.upload}"
    before = await world.held()
    for method, headers, body in (
        ("GET", TUS, b""),
        ("HEAD", TUS, b""),
        ("PATCH", {**OCTETS, "Upload-Offset": "3"}, b"def"),
        ("DELETE", TUS, b""),
    ):
        theirs = await world.call(OTHER, method, path, headers, body)
        nobody = await world.call(OTHER, method, "/uploads/no-such-upload", headers, body)
        theirs.assert_problem(404, "not-found")
        assert theirs.comparable() == nobody.comparable(), method
        for credential in (OWNER, ADMIN):
            mine = await world.call(credential, method, path, headers, body)
            mine.assert_problem(410, "gone")
    assert await world.held() == before
    await world.new_upload()


async def test_a_method_override_is_checked_as_the_method_it_names(world: World) -> None:
    """POST with X-HTTP-Method-Override (tus behind GET/POST-only proxies)
    needs the scope of the method it names and finds what it would find."""
    path = f"/uploads/{world.upload}"
    before = await world.held()
    for method, headers, body, refused in (
        ("PATCH", {**OCTETS, "Upload-Offset": "3"}, b"def", READ),
        ("DELETE", TUS, b"", READ),
        ("HEAD", TUS, b"", WRITE),
    ):
        overridden = {**headers, "X-HTTP-Method-Override": method}
        assert_forbidden(await world.call(refused, "POST", path, overridden, body))
        theirs = await world.call(OTHER, "POST", path, overridden, body)
        nobody = await world.call(OTHER, "POST", "/uploads/no-such-upload", overridden, body)
        theirs.assert_problem(404, "not-found")
        assert theirs.comparable() == nobody.comparable(), method
    assert await world.held() == before


async def test_a_key_that_expires_makes_no_key_that_outlives_it(world: World) -> None:
    made = await world.call(
        ADMIN,
        "POST",
        f"/users/{world.alice}/keys",
        JSON,
        b'{"scopes": ["read", "write"], "expires_in": 3600}',
    )
    assert made.status == 201, made
    expiring = made.json()["secret"]
    before = await world.held()
    for asked in (b"{}", b'{"expires_in": 3601}', b'{"expires_in": 86400}'):
        answer = await exchange(
            world.client, "POST", f"/users/{world.alice}/keys", expiring, JSON, asked
        )
        answer.assert_problem(400, "validation-failed")
        assert answer.problem()["errors"][0]["field"] == "expires_in"
    assert await world.held() == before
    shorter = b'{"expires_in": 60}'
    answer = await exchange(
        world.client, "POST", f"/users/{world.alice}/keys", expiring, JSON, shorter
    )
    assert answer.status == 201, answer
