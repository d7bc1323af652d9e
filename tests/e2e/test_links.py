"""End to end: a signed download link followed with curl, no key at all."""

from __future__ import annotations

import os
import re
import sqlite3

import httpx

from devtools.auth import bearer
from devtools.curl import curl
from devtools.server import RunningServer

DATA = os.urandom(200_000)


def test_a_link_downloads_with_curl_and_no_key_until_revoked(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, headers=bearer(), timeout=30) as admin:
        user = admin.post("/users", json={"name": "Ada", "email": "ada@example.com"}).json()
        key = admin.post(f"/users/{user['id']}/keys", json={}).json()["secret"]
    with httpx.Client(base_url=server.url, headers=bearer(key), timeout=30) as owner:
        answer = owner.post(
            "/files",
            content=DATA,
            headers={"Content-Disposition": 'attachment; filename="data.bin"'},
        )
        assert answer.status_code == 201
        file = answer.json()
        answer = owner.post(f"/files/{file['id']}/links", json={"expires_in": 600})
        assert answer.status_code == 201
        link = answer.json()
    location = answer.headers["location"]
    assert re.fullmatch(rf"{server.url}/links/{link['id']}\.[A-Za-z0-9_-]{{43}}", location)
    token = location.rsplit("/", 1)[1]
    secret = token.partition(".")[2]

    # curl sends no Authorization header unless told to.
    status, headers, _ = curl("-o", os.devnull, "-D", "-", location)
    assert status == 200
    assert headers["content-length"] == str(len(DATA))
    assert headers["etag"] == file["etag"]
    assert headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in headers["content-security-policy"]
    assert 'filename="data.bin"' in headers["content-disposition"]
    downloaded = httpx.get(location, timeout=30)
    assert "authorization" not in downloaded.request.headers
    assert downloaded.status_code == 200
    assert downloaded.content == DATA

    status, headers, body = curl("-r", "100-199", location)
    assert status == 206
    assert headers["content-range"] == f"bytes 100-199/{len(DATA)}"
    status, _, _ = curl("-H", f"If-None-Match: {file['etag']}", location)
    assert status == 304
    status, headers, _ = curl("-I", location)
    assert status == 200
    assert headers["content-length"] == str(len(DATA))

    answer = httpx.delete(
        f"{server.url}/files/{file['id']}/links/{link['id']}", headers=bearer(key), timeout=30
    )
    assert answer.status_code == 204
    status, headers, body = curl(location)
    assert status == 403
    assert headers["content-type"] == "application/problem+json"
    assert "link-refused" in body
    assert file["id"] not in body and "ada@example.com" not in body

    # Neither the server's logs nor its database hold the token.
    assert secret not in server.log()
    assert f"/links/{link['id']}..." in server.log()
    with sqlite3.connect(server.database_path) as db:
        dump = "\n".join(db.iterdump())
    assert secret not in dump
