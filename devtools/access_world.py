"""Two users, their keys and their resources, for the access tests.

Alice owns a file, a batch, a resumable upload and a spare key; she has a
read key, a write key and a read-and-write key. Bob has a read-and-write key
and a file of his own. The admin key is the environment's (the operator).
Every request goes through :func:`exchange`, the raw ASGI exchange, so an
answer is compared byte for byte (the test client's ``head()`` would
recompute Content-Length).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quart import Quart
from sqlalchemy import select
from werkzeug.datastructures import Headers

from quart_app.db.models import File, Upload
from quart_app.edge.problem_details import problem_type
from quart_app.state import app_state

from .auth import TEST_ADMIN_KEY, KeyedClient
from .form_data import multipart, multipart_headers, part
from .quart_client import as_http_connection
from .stored import everything_held

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}

# The credentials of the matrix, by what they are.
NONE = "no key"
BAD = "bad key"
READ = "read key"
WRITE = "write key"
OWNER = "owner's key"
OTHER = "other owner's key"
ADMIN = "admin key"
CREDENTIALS = (NONE, BAD, READ, WRITE, OWNER, OTHER, ADMIN)

# Headers that differ between any two answers, whatever they say.
PER_ANSWER = frozenset({"date", "x-request-id"})


@dataclass
class Answer:
    method: str
    status: int
    headers: Headers
    body: bytes

    def problem(self) -> dict[str, Any]:
        assert self.headers["Content-Type"] == "application/problem+json", self
        document: dict[str, Any] = json.loads(self.body)
        return document

    def assert_problem(self, status: int, code: str) -> None:
        """A problem of this type (a HEAD: the status and content type only;
        Hypercorn drops the body of an answer to HEAD, the test client does not)."""
        assert self.status == status, self
        if self.method == "HEAD":
            assert self.headers["Content-Type"] == "application/problem+json", self
        else:
            assert self.problem()["type"] == problem_type(code), self
            assert self.problem()["status"] == status, self

    def json(self) -> Any:
        return json.loads(self.body)

    def comparable(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """Everything a client can see, but the date and the request id."""
        headers = self.headers.items()
        kept = sorted((k.lower(), v) for k, v in headers if k.lower() not in PER_ANSWER)
        return self.status, kept, self.body

    def __str__(self) -> str:
        return f"{self.status} {self.body[:300]!r}"


async def exchange(
    client: KeyedClient,
    method: str,
    path: str,
    key: str | None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    scope_base: dict[str, Any] | None = None,
) -> Answer:
    """One request with ``key`` (None: no Authorization header), answered in full."""
    client.key = key
    connection = as_http_connection(
        client.request(path, method=method, headers=dict(headers or {}), scope_base=scope_base)
    )
    async with connection:
        if body:
            await connection.send(body)
        await connection.send_complete()
    assert connection.status_code is not None and connection.headers is not None
    return Answer(
        method, connection.status_code, connection.headers, bytes(connection.response_data)
    )


def assert_unauthorized(answer: Answer, invalid_token: bool) -> None:
    answer.assert_problem(401, "unauthorized")
    challenge = answer.headers.get("WWW-Authenticate", "")
    assert challenge.startswith('Bearer realm="quart_app"'), challenge
    assert ('error="invalid_token"' in challenge) == invalid_token, challenge


def assert_forbidden(answer: Answer) -> None:
    answer.assert_problem(403, "insufficient-scope")
    assert 'error="insufficient_scope"' in answer.headers.get("WWW-Authenticate", "")


@dataclass
class World:
    app: Quart
    client: KeyedClient
    storage: Path
    keys: dict[str, str | None] = field(default_factory=dict)
    alice: int = 0
    bob: int = 0
    file: str = "alice-file"
    batch: str = ""
    upload: str = ""
    spare_key: str = ""

    async def call(
        self,
        credential: str,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Answer:
        return await exchange(self.client, method, path, self.keys[credential], headers, body)

    async def held(self) -> dict[str, object]:
        return await everything_held(self.app, self.storage)

    async def owners(self, model: type[File] | type[Upload], resource_id: str) -> list[int]:
        """The owners of the files (or uploads) with this id."""
        query = select(model.owner_id).where(model.id == resource_id).order_by(model.owner_id)
        async with app_state(self.app).database.sessionmaker() as session:
            return list(await session.scalars(query))

    async def new_key(self, user_id: int, *scopes: str) -> tuple[str, str]:
        """(key id, secret) of a new key made with the admin key."""
        answer = await self.call(
            ADMIN,
            "POST",
            f"/users/{user_id}/keys",
            {"Content-Type": "application/json"},
            json.dumps({"scopes": list(scopes)}).encode(),
        )
        assert answer.status == 201, answer
        body = answer.json()
        return body["id"], body["secret"]

    async def put_file(self, credential: str, file_id: str, data: bytes) -> None:
        answer = await self.call(credential, "PUT", f"/files/{file_id}", {}, data)
        assert answer.status in (200, 201), answer

    async def new_upload(self) -> None:
        """Alice's upload of 10 bytes, 3 received."""
        answer = await self.call(OWNER, "POST", "/uploads", {**TUS, "Upload-Length": "10"})
        assert answer.status == 201, answer
        self.upload = answer.headers["Location"].rsplit("/", 1)[1]
        patched = await self.call(
            OWNER, "PATCH", f"/uploads/{self.upload}", {**OCTETS, "Upload-Offset": "0"}, b"abc"
        )
        assert patched.status == 204, patched

    async def new_spare_key(self) -> None:
        self.spare_key, _ = await self.new_key(self.alice, "read")


async def make_world(app: Quart, client: KeyedClient, storage: Path) -> World:
    world = World(app, client, storage)
    world.keys = {NONE: None, BAD: "qa_" + secrets.token_urlsafe(32), ADMIN: TEST_ADMIN_KEY}
    for name in ("alice", "bob"):
        answer = await world.call(
            ADMIN,
            "POST",
            "/users",
            {"Content-Type": "application/json"},
            json.dumps({"name": name, "email": f"{name}@example.com"}).encode(),
        )
        assert answer.status == 201, answer
        setattr(world, name, answer.json()["id"])
    _, world.keys[READ] = await world.new_key(world.alice, "read")
    _, world.keys[WRITE] = await world.new_key(world.alice, "write")
    _, world.keys[OWNER] = await world.new_key(world.alice, "read", "write")
    _, world.keys[OTHER] = await world.new_key(world.bob, "read", "write")
    await world.new_spare_key()
    await world.put_file(OWNER, world.file, b"alice's bytes")
    await world.put_file(OTHER, "bob-file", b"bob's bytes")
    batch = await world.call(
        OWNER,
        "POST",
        "/files",
        multipart_headers(),
        multipart(part("file", b"one", "1.txt"), part("file", b"two", "2.txt")),
    )
    assert batch.status == 201, batch
    world.batch = batch.json()["id"]
    await world.new_upload()
    return world
