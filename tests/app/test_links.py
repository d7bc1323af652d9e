"""Signed download links: made by a file's owner, followed without a key."""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from quart import Quart
from quart.testing import QuartClient
from sqlalchemy import text, update
from werkzeug.datastructures import Headers

from devtools.auth import TEST_ADMIN_KEY, bearer
from devtools.quart_client import as_http_connection
from quart_app import create_app
from quart_app.db.models import DownloadLink, utc_now
from quart_app.edge.access_log import JSONFormatter
from quart_app.ops.sweeps import sweep_once
from quart_app.services import download_links
from quart_app.state import app_state

DATA = os.urandom(1000)
# /links/<link id>.<secret>
LINK_URL = re.compile(r"^http://localhost/links/((dl_[A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{43}))$")
REFUSED = "urn:quart-app:problem:link-refused"
# What a link's answer may not carry: whose file it is, or what else they have.
OWNER_NAME = "Alice Owner"
OWNER_EMAIL = "alice.owner@example.com"


async def new_user(client: QuartClient, email: str, scopes: list[str] | None = None) -> str:
    """A user with a key of ``scopes`` (read and write by default); the key."""
    answer = await client.post("/users", json={"name": OWNER_NAME, "email": email})
    assert answer.status_code == 201
    user = await answer.get_json()
    answer = await client.post(
        f"/users/{user['id']}/keys", json={"scopes": scopes or ["read", "write"]}
    )
    assert answer.status_code == 201
    secret: str = (await answer.get_json())["secret"]
    return secret


async def upload(client: QuartClient, key: str, data: bytes = DATA) -> dict[str, Any]:
    """A file ``key``'s account owns, uploaded as report.txt (so its id,
    random, appears nowhere in what a link answers)."""
    answer = await client.post(
        "/files",
        data=data,
        headers={
            **bearer(key),
            "Content-Type": "text/plain",
            "Content-Disposition": 'attachment; filename="report.txt"',
        },
    )
    assert answer.status_code == 201, await answer.get_data()
    body: dict[str, Any] = await answer.get_json()
    return body


async def make_link(
    client: QuartClient, file_id: str, key: str | None = None, **body: Any
) -> dict[str, Any]:
    headers = bearer(key) if key else None
    answer = await client.post(f"/files/{file_id}/links", json=body, headers=headers)
    assert answer.status_code == 201, await answer.get_data()
    link: dict[str, Any] = await answer.get_json()
    assert answer.headers["Location"] == link["url"]
    return link


def path_of(url: str) -> str:
    return url.removeprefix("http://localhost")


async def fetch(client: QuartClient, url: str, method: str = "GET", **headers: str) -> Any:
    """Follow a link as anyone would: no Authorization header."""
    client.key = None  # type: ignore[attr-defined]
    try:
        return await client.open(path_of(url), method=method, headers=headers)
    finally:
        client.key = TEST_ADMIN_KEY  # type: ignore[attr-defined]


async def head(client: QuartClient, url: str) -> tuple[int, Headers, bytes]:
    """A HEAD as it goes over the wire (the test client's answer object
    would recompute Content-Length from the empty body)."""
    client.key = None  # type: ignore[attr-defined]
    try:
        async with as_http_connection(client.request(path_of(url), method="HEAD")) as connection:
            await connection.send_complete()
            data = await connection.receive()
    finally:
        client.key = TEST_ADMIN_KEY  # type: ignore[attr-defined]
    assert connection.headers is not None
    return connection.status_code or 0, connection.headers, data


async def refused(client: QuartClient, url: str) -> bytes:
    answer = await fetch(client, url)
    assert answer.status_code == 403
    assert answer.content_type == "application/problem+json"
    body: bytes = await answer.get_data()
    assert json.loads(body)["type"] == REFUSED
    return body


async def link_rows(app: Quart) -> list[Any]:
    async with app_state(app).database.engine.connect() as conn:
        return list(await conn.execute(text("SELECT * FROM download_links")))


async def expire(app: Quart, link_id: str, when: datetime) -> None:
    """Move the link's expiry (no waiting for the clock)."""
    async with app_state(app).database.sessionmaker() as session:
        await session.execute(
            update(DownloadLink).where(DownloadLink.id == link_id).values(expires_at=when)
        )
        await session.commit()


@pytest.fixture
async def owner(client: QuartClient) -> str:
    return await new_user(client, OWNER_EMAIL)


async def test_a_link_is_made_with_its_url_shown_once(
    app: Quart, client: QuartClient, owner: str
) -> None:
    file = await upload(client, owner)
    answer = await client.post(f"/files/{file['id']}/links", headers=bearer(owner))
    assert answer.status_code == 201
    link = await answer.get_json()
    assert set(link) == {"id", "url", "file", "created_at", "expires_at", "revoked_at"}
    # The URL names the link alone: no user, no file id.
    match = LINK_URL.fullmatch(answer.headers["Location"])
    assert match is not None
    assert link["url"] == answer.headers["Location"]
    assert match.group(2) == link["id"]
    assert link["file"] == file["links"]["self"]
    assert link["revoked_at"] is None
    created = datetime.fromisoformat(link["created_at"])
    assert datetime.fromisoformat(link["expires_at"]) - created == timedelta(days=1)
    assert answer.headers["Cache-Control"] == "no-store"
    # Only the token's hash is kept.
    [row] = await link_rows(app)
    assert match.group(3) not in str(tuple(row))
    listed = await (
        await client.get(f"/files/{file['id']}/links", headers=bearer(owner))
    ).get_json()
    assert listed == {"items": [{**link, "url": None}], "next": None}


async def test_expires_in_is_honoured_and_bounded_by_the_settings(
    client: QuartClient, owner: str
) -> None:
    file = await upload(client, owner)
    link = await make_link(client, file["id"], owner, expires_in=60)
    lived = datetime.fromisoformat(link["expires_at"]) - datetime.fromisoformat(link["created_at"])
    assert lived == timedelta(seconds=60)
    longest = await make_link(client, file["id"], owner, expires_in=7 * 24 * 3600)
    assert longest["expires_at"] > link["expires_at"]
    for bad in (7 * 24 * 3600 + 1, 0, -5, "60", None, 1.5):
        answer = await client.post(
            f"/files/{file['id']}/links", json={"expires_in": bad}, headers=bearer(owner)
        )
        expected = 201 if bad is None else 400
        assert answer.status_code == expected, bad
    answer = await client.post(
        f"/files/{file['id']}/links", json={"expire_in": 60}, headers=bearer(owner)
    )
    assert answer.status_code == 400


async def test_the_default_and_the_longest_lifetime_are_settings(
    overrides: dict[str, Any],
) -> None:
    app = create_app({**overrides, "LINK_EXPIRES_SECONDS": 90, "LINK_MAX_EXPIRES_SECONDS": 120})
    async with app.test_app():
        client = app.test_client()
        answer = await client.put("/files/a.bin", data=DATA)
        assert answer.status_code == 201
        link = await (await client.post("/files/a.bin/links")).get_json()
        lived = datetime.fromisoformat(link["expires_at"]) - datetime.fromisoformat(
            link["created_at"]
        )
        assert lived == timedelta(seconds=90)
        answer = await client.post("/files/a.bin/links", json={"expires_in": 121})
        assert answer.status_code == 400
        assert (await answer.get_json())["errors"][0]["field"] == "expires_in"


async def test_the_body_is_json_or_nothing_and_takes_no_idempotency_key(
    app: Quart, client: QuartClient, owner: str
) -> None:
    file = await upload(client, owner)
    url = f"/files/{file['id']}/links"
    answer = await client.post(url, data=b"expires_in=60", headers=bearer(owner))
    assert answer.status_code == 415
    answer = await client.post(
        url, data=b"x", headers={**bearer(owner), "Content-Type": "text/plain"}
    )
    assert answer.status_code == 415
    answer = await client.post(url, json={}, headers={**bearer(owner), "Idempotency-Key": "k1"})
    assert answer.status_code == 400
    assert await link_rows(app) == []
    answer = await client.post(url, json={}, headers=bearer(owner))
    assert answer.status_code == 201


async def test_a_link_downloads_without_a_key_as_the_content_url_does(
    client: QuartClient, owner: str
) -> None:
    file = await upload(client, owner)
    link = await make_link(client, file["id"], owner)
    content = await client.get(f"/files/{file['id']}/content", headers=bearer(owner))

    answer = await fetch(client, link["url"])
    assert answer.status_code == 200
    assert await answer.get_data() == DATA
    for name in (
        "ETag",
        "Last-Modified",
        "Content-Disposition",
        "Content-Type",
        "Accept-Ranges",
        "X-Content-Type-Options",
        "Content-Security-Policy",
    ):
        assert answer.headers[name] == content.headers[name], name
    assert answer.headers["Content-Length"] == "1000"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in answer.headers["Content-Security-Policy"]
    assert 'filename="report.txt"' in answer.headers["Content-Disposition"]
    # The token is in the URL: it goes no further, and no shared cache or
    # search engine keeps what it serves.
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert answer.headers["X-Robots-Tag"] == "noindex, nofollow"
    assert answer.headers["Cache-Control"] == "private, no-cache"

    etag = answer.headers["ETag"]
    answer = await fetch(client, link["url"], Range="bytes=100-199")
    assert answer.status_code == 206
    assert await answer.get_data() == DATA[100:200]
    assert answer.headers["Content-Range"] == "bytes 100-199/1000"

    answer = await fetch(client, link["url"], Range="bytes=5000-")
    assert answer.status_code == 416
    assert answer.headers["Content-Range"] == "bytes */1000"

    answer = await fetch(client, link["url"], **{"If-None-Match": etag})
    assert answer.status_code == 304
    assert await answer.get_data() == b""
    assert answer.headers["ETag"] == etag

    answer = await fetch(client, link["url"], **{"If-Match": '"other"'})
    assert answer.status_code == 412

    answer = await fetch(client, link["url"], **{"Range": "bytes=0-9", "If-Range": etag})
    assert answer.status_code == 206
    answer = await fetch(client, link["url"], **{"Range": "bytes=0-9", "If-Range": '"old"'})
    assert answer.status_code == 200
    assert await answer.get_data() == DATA

    status, headers, data = await head(client, link["url"])
    assert status == 200
    assert data == b""
    assert headers["Content-Length"] == "1000"
    assert headers["ETag"] == etag


async def test_a_link_serves_the_file_as_it_is_now(client: QuartClient) -> None:
    answer = await client.put("/files/doc.txt", data=b"first version")
    first = await answer.get_json()
    link = await make_link(client, "doc.txt")
    answer = await client.put("/files/doc.txt", data=b"second, longer version")
    assert answer.status_code == 200
    second = await answer.get_json()

    answer = await fetch(client, link["url"])
    assert await answer.get_data() == b"second, longer version"
    assert answer.headers["ETag"] == second["etag"]
    # A client resuming the first version must not get a piece of the second.
    answer = await fetch(client, link["url"], **{"Range": "bytes=5-", "If-Range": first["etag"]})
    assert answer.status_code == 200
    assert await answer.get_data() == b"second, longer version"
    answer = await fetch(client, link["url"], **{"If-None-Match": first["etag"]})
    assert answer.status_code == 200


def flip(text: str, at: int) -> str:
    return text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :]


async def test_a_tampered_token_is_refused(client: QuartClient, owner: str) -> None:
    file = await upload(client, owner)
    link, other = [await make_link(client, file["id"], owner) for _ in "12"]
    token, link_id, secret = LINK_URL.fullmatch(link["url"]).groups()  # type: ignore[union-attr]
    other_secret = LINK_URL.fullmatch(other["url"]).group(3)  # type: ignore[union-attr]
    for forged in (
        f"{link_id}.{flip(secret, 20)}",
        f"{link_id}.{flip(secret, 0)}",
        f"{link_id}.{flip(secret, 42)}",
        f"{flip(link_id, 10)}.{secret}",
        f"{link_id}.{other_secret}",  # a real secret, of another link
        f"{link_id}.{secret[::-1]}",
        token[:-1],
        token + "A",
        token.upper(),
        token.replace(".", "_"),
        "qa_" + token[3:],
        f"{link_id}.",
        link_id,
        "x",
        "dl_" + "A" * 16 + "." + "A" * 43,
        token + "%00",
        "🔑" * 10,
    ):
        await refused(client, f"http://localhost/links/{forged}")
    for real in (link, other):
        assert (await fetch(client, real["url"])).status_code == 200


async def test_every_refusal_is_the_same_answer_and_says_nothing_of_the_file(
    app: Quart, client: QuartClient, owner: str
) -> None:
    file = await upload(client, owner)
    expired, revoked, deleted, kept = [await make_link(client, file["id"], owner) for _ in "1234"]
    other = await upload(client, owner, b"other bytes")
    on_deleted = await make_link(client, other["id"], owner)
    await expire(app, expired["id"], datetime(2020, 1, 1, tzinfo=UTC))
    answer = await client.delete(
        f"/files/{file['id']}/links/{revoked['id']}", headers=bearer(owner)
    )
    assert answer.status_code == 204
    assert (await client.delete(f"/files/{other['id']}", headers=bearer(owner))).status_code == 204

    tampered = kept["url"][:-1] + ("A" if kept["url"][-1] != "A" else "B")
    bodies = {await refused(client, link["url"]) for link in (expired, revoked, on_deleted)} | {
        await refused(client, tampered)
    }
    assert len(bodies) == 1
    [body] = bodies
    for secret in (file["id"], other["id"], "report.txt", OWNER_EMAIL, OWNER_NAME, file["sha256"]):
        assert secret.encode() not in body
    answer = await fetch(client, deleted["url"])
    assert answer.status_code == 200


async def test_a_link_answer_carries_nothing_of_its_owner(client: QuartClient, owner: str) -> None:
    file = await upload(client, owner)
    await upload(client, owner, b"another file of hers")
    link = await make_link(client, file["id"], owner)
    answer = await fetch(client, link["url"])
    _, headers, _ = await head(client, link["url"])
    for shown in (str(answer.headers), str(headers), (await answer.get_data()).decode("latin-1")):
        for secret in (OWNER_EMAIL, OWNER_NAME, file["id"], "/users", "/files", "owner"):
            assert secret.lower() not in shown.lower(), secret


async def test_an_expired_link_is_refused_and_swept(
    app: Quart, client: QuartClient, owner: str
) -> None:
    file = await upload(client, owner)
    expired = await make_link(client, file["id"], owner, expires_in=1)
    live = await make_link(client, file["id"], owner)
    await expire(app, expired["id"], utc_now() - timedelta(seconds=1))
    await refused(client, expired["url"])
    await sweep_once(app_state(app))
    assert [row.id for row in await link_rows(app)] == [live["id"]]
    await refused(client, expired["url"])
    assert (await fetch(client, live["url"])).status_code == 200
    listed = await (
        await client.get(f"/files/{file['id']}/links", headers=bearer(owner))
    ).get_json()
    assert [link["id"] for link in listed["items"]] == [live["id"]]


async def test_a_revoked_link_is_refused_and_listed_as_revoked(
    client: QuartClient, owner: str
) -> None:
    file = await upload(client, owner)
    link = await make_link(client, file["id"], owner)
    assert (await fetch(client, link["url"])).status_code == 200
    url = f"/files/{file['id']}/links/{link['id']}"
    assert (await client.delete(url, headers=bearer(owner))).status_code == 204
    await refused(client, link["url"])
    assert (await client.delete(url, headers=bearer(owner))).status_code == 204  # idempotent
    listed = await (
        await client.get(f"/files/{file['id']}/links", headers=bearer(owner))
    ).get_json()
    [shown] = listed["items"]
    assert shown["revoked_at"] is not None
    answer = await client.delete(f"/files/{file['id']}/links/lnk_nope", headers=bearer(owner))
    assert answer.status_code == 404


async def test_an_admin_key_manages_anyones_links(client: QuartClient, owner: str) -> None:
    file = await upload(client, owner)
    link = await make_link(client, file["id"])  # the admin key
    listed = await (
        await client.get(f"/files/{file['id']}/links", headers=bearer(owner))
    ).get_json()
    assert [item["id"] for item in listed["items"]] == [link["id"]]
    answer = await client.delete(f"/files/{file['id']}/links/{link['id']}")
    assert answer.status_code == 204
    await refused(client, link["url"])


async def test_another_owner_cannot_make_list_or_revoke_links(
    app: Quart, client: QuartClient, owner: str
) -> None:
    file = await upload(client, owner)
    link = await make_link(client, file["id"], owner)
    intruder = await new_user(client, "mallory@example.com")
    own = await upload(client, intruder)
    missing = "nosuchfile0000000000aa"
    for method, path, body in (
        ("POST", "/files/{}/links", {}),
        ("GET", "/files/{}/links", None),
        ("DELETE", "/files/{}/links/" + link["id"], None),
    ):
        theirs = await client.open(
            path.format(file["id"]), method=method, json=body, headers=bearer(intruder)
        )
        nothing = await client.open(
            path.format(missing), method=method, json=body, headers=bearer(intruder)
        )
        assert theirs.status_code == 404, (method, path)
        problem = await theirs.get_json()
        # Byte for byte the answer for a file that does not exist.
        assert {**problem, "detail": problem["detail"].replace(file["id"], missing)} == (
            await nothing.get_json()
        )
    # Their own file's URL does not reach someone else's link either.
    answer = await client.delete(f"/files/{own['id']}/links/{link['id']}", headers=bearer(intruder))
    assert answer.status_code == 404
    assert [row.revoked_at for row in await link_rows(app)] == [None]
    assert (await fetch(client, link["url"])).status_code == 200


async def test_a_read_key_lists_links_but_cannot_make_or_revoke_them(
    client: QuartClient,
) -> None:
    answer = await client.post("/users", json={"name": OWNER_NAME, "email": OWNER_EMAIL})
    user = await answer.get_json()
    keys = {}
    for scopes in (["read", "write"], ["read"]):
        answer = await client.post(f"/users/{user['id']}/keys", json={"scopes": scopes})
        keys[scopes[-1]] = (await answer.get_json())["secret"]
    file = await upload(client, keys["write"])
    link = await make_link(client, file["id"], keys["write"])
    reader = bearer(keys["read"])
    answer = await client.post(f"/files/{file['id']}/links", headers=reader)
    assert answer.status_code == 403
    answer = await client.delete(f"/files/{file['id']}/links/{link['id']}", headers=reader)
    assert answer.status_code == 403
    answer = await client.get(f"/files/{file['id']}/links", headers=reader)
    assert answer.status_code == 200
    client.key = None  # type: ignore[attr-defined]
    assert (await client.post(f"/files/{file['id']}/links")).status_code == 401
    assert (await client.get(f"/files/{file['id']}/links")).status_code == 401


async def test_deleting_the_file_kills_its_links_for_good(app: Quart, client: QuartClient) -> None:
    assert (await client.put("/files/doc.txt", data=b"hello")).status_code == 201
    link = await make_link(client, "doc.txt")
    assert (await client.delete("/files/doc.txt")).status_code == 204
    await refused(client, link["url"])
    assert await link_rows(app) == []
    # A new file under the same id is not what the link was made for.
    assert (await client.put("/files/doc.txt", data=b"hello")).status_code == 201
    await refused(client, link["url"])


async def test_the_access_log_shows_the_link_not_its_token(
    client: QuartClient, owner: str, caplog: pytest.LogCaptureFixture
) -> None:
    file = await upload(client, owner)
    link = await make_link(client, file["id"], owner)
    secret = LINK_URL.fullmatch(link["url"]).group(3)  # type: ignore[union-attr]
    caplog.set_level(logging.INFO, logger="quart_app.access")
    caplog.clear()
    await fetch(client, link["url"])
    await fetch(client, link["url"] + "x")  # refused: not logged in full either
    lines = [
        json.loads(JSONFormatter().format(r))
        for r in caplog.records
        if r.name == "quart_app.access"
    ]
    assert [line["status"] for line in lines] == [200, 403]
    assert lines[0]["path"] == f"/links/{link['id']}..."
    assert lines[0]["link_id"] == link["id"]
    assert lines[0]["key_id"] is None
    assert lines[1]["link_id"] is None
    for line in lines:
        assert secret[:8] not in json.dumps(line)


async def test_the_error_log_shows_the_link_not_its_token(
    app: Quart,
    client: QuartClient,
    owner: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    file = await upload(client, owner)
    link = await make_link(client, file["id"], owner)
    secret = LINK_URL.fullmatch(link["url"]).group(3)  # type: ignore[union-attr]

    async def broken(sha256: str) -> Any:
        raise RuntimeError("the disk caught fire")

    monkeypatch.setattr(app_state(app).store, "open", broken)
    caplog.set_level(logging.INFO)
    caplog.clear()
    answer = await fetch(client, link["url"])
    assert answer.status_code == 500
    [error] = [r for r in caplog.records if r.name == "quart_app.errors"]
    assert error.path == f"/links/{link['id']}..."  # type: ignore[attr-defined]
    for record in caplog.records:
        assert secret[:8] not in JSONFormatter().format(record)


async def test_a_file_has_a_bounded_number_of_live_links(
    app: Quart, client: QuartClient, owner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download_links, "MAX_LIVE_LINKS_PER_FILE", 2)
    file = await upload(client, owner)
    first, second = [await make_link(client, file["id"], owner) for _ in "12"]
    url = f"/files/{file['id']}/links"
    answer = await client.post(url, headers=bearer(owner))
    assert answer.status_code == 409
    assert (await answer.get_json())["type"] == "urn:quart-app:problem:conflict"
    assert len(await link_rows(app)) == 2
    # Revoked and expired links leave room.
    assert (await client.delete(f"{url}/{first['id']}", headers=bearer(owner))).status_code == 204
    third = await make_link(client, file["id"], owner)
    await expire(app, second["id"], datetime(2020, 1, 1, tzinfo=UTC))
    await make_link(client, file["id"], owner)
    assert (await client.post(url, headers=bearer(owner))).status_code == 409
    assert (await fetch(client, third["url"])).status_code == 200


async def test_a_links_url_carries_the_public_url(overrides: dict[str, Any]) -> None:
    app = create_app({**overrides, "PUBLIC_URL": "https://example.com/storage/v1/"})
    async with app.test_app():
        client = app.test_client()
        assert (await client.put("/files/a.bin", data=DATA)).status_code == 201
        link = await (await client.post("/files/a.bin/links")).get_json()
        prefix = "https://example.com/storage/v1/links/"
        assert link["url"].startswith(prefix + link["id"] + ".")
        assert link["file"] == "https://example.com/storage/v1/files/a.bin"
        # The proxy strips the prefix; what reaches the app still downloads.
        client.key = None  # type: ignore[attr-defined]
        answer = await client.get("/links/" + link["url"].removeprefix(prefix))
        assert answer.status_code == 200
        assert await answer.get_data() == DATA
