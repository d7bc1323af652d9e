"""Accounts and API keys: creating, listing, revoking keys; what is stored
and logged of them; open sign-up; the operator commands; the migration that
gives rows made before accounts an owner."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from devtools.auth import KeyedClient
from devtools.form_data import multipart, multipart_headers, part
from devtools.quart_client import as_quart_client
from quart_app import create_app
from quart_app.__main__ import main
from quart_app.config import ConfigError, load_settings
from quart_app.db.migrate import migrate_to
from quart_app.db.models import ApiKey, File, Upload
from quart_app.services.accounts import OPERATOR_EMAIL
from quart_app.state import app_state

PROBLEM = "urn:quart-app:problem:"


def keyed(app: Quart, key: str | None) -> KeyedClient:
    client = as_quart_client(app.test_client())
    assert isinstance(client, KeyedClient)
    client.key = key
    return client


async def new_user(app: Quart, email: str, scopes: list[str] | None = None) -> tuple[int, str]:
    """A user made with the admin key, and a key of its own."""
    admin = keyed(app, "qa_test-admin-key-0123456789abcdefghij")
    user = await admin.post("/users", json={"name": email.split("@")[0], "email": email})
    assert user.status_code == 201, await user.get_data()
    user_id = (await user.get_json())["id"]
    body = {"scopes": scopes} if scopes else {}
    key = await admin.post(f"/users/{user_id}/keys", json=body)
    assert key.status_code == 201, await key.get_data()
    return user_id, (await key.get_json())["secret"]


async def test_a_key_is_shown_once_and_listed_without_its_secret(app: Quart) -> None:
    user_id, secret = await new_user(app, "ada@example.com")
    me = keyed(app, secret)
    made = await me.post(f"/users/{user_id}/keys", json={"scopes": ["read"], "expires_in": 3600})
    assert made.status_code == 201
    assert made.headers["Cache-Control"] == "no-store"
    body = await made.get_json()
    assert made.headers["Location"].endswith(f"/users/{user_id}/keys/{body['id']}")
    assert body["secret"].startswith("qa_") and len(body["secret"]) == 46
    assert body["prefix"] == body["secret"][:10]
    assert body["scopes"] == ["read"] and body["expires_at"] is not None
    listed = await (await me.get(f"/users/{user_id}/keys")).get_json()
    assert len(listed["items"]) == 2
    assert all("secret" not in item for item in listed["items"])
    one = await me.get(made.headers["Location"])
    assert one.status_code == 200 and "secret" not in await one.get_json()
    assert (await keyed(app, body["secret"]).get(f"/users/{user_id}")).status_code == 200


async def test_the_secret_is_never_stored_or_logged(
    app: Quart, overrides: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_app")
    user_id, secret = await new_user(app, "ada@example.com")
    response = await keyed(app, secret).get(f"/users/{user_id}")
    assert response.status_code == 200
    await app_state(app).keys.flush_used()
    async with app_state(app).database.sessionmaker() as session:
        key = await session.scalar(select(ApiKey).where(ApiKey.user_id == user_id))
    assert key is not None and key.secret_hash != secret
    database = Path(str(overrides["DATABASE_URL"]).partition(":///")[2])
    stored = b"".join(p.read_bytes() for p in database.parent.iterdir() if p.is_file())
    assert secret.encode() not in stored
    assert secret not in caplog.text
    lines = [r for r in caplog.records if r.name == "quart_app.access"]
    assert lines[-1].__dict__["key_id"] == key.id


async def test_last_use_is_noted_without_a_write_per_request(app: Quart) -> None:
    state = app_state(app)
    state._stop_sweeping.set()  # no background sweep in between: only the requests
    if state._sweeper is not None:
        await state._sweeper
        state._sweeper = None
    user_id, secret = await new_user(app, "ada@example.com")
    me = keyed(app, secret)
    for _ in range(5):
        assert (await me.get(f"/users/{user_id}")).status_code == 200

    async def last_used() -> Any:
        async with app_state(app).database.sessionmaker() as session:
            return await session.scalar(
                select(ApiKey.last_used_at).where(ApiKey.user_id == user_id)
            )

    assert await last_used() is None  # nothing written by the requests themselves
    assert await app_state(app).keys.flush_used() == 1  # the sweep's batch
    assert await last_used() is not None
    listed = await (await me.get(f"/users/{user_id}/keys")).get_json()
    assert listed["items"][0]["last_used_at"] is not None


async def test_a_revoked_key_stops_working_within_the_cache_time(
    overrides: dict[str, Any],
) -> None:
    app = create_app({**overrides, "KEY_CACHE_SECONDS": 0.2})
    async with app.test_app():
        user_id, secret = await new_user(app, "ada@example.com")
        me = keyed(app, secret)
        assert (await me.get(f"/users/{user_id}")).status_code == 200
        key_url = (await (await me.get(f"/users/{user_id}/keys")).get_json())["items"][0]["id"]
        revoked = await keyed(app, "qa_test-admin-key-0123456789abcdefghij").delete(
            f"/users/{user_id}/keys/{key_url}"
        )
        assert revoked.status_code == 204
        await asyncio.sleep(0.3)
        refused = await me.get(f"/users/{user_id}")
        assert refused.status_code == 401
        assert (
            refused.headers["WWW-Authenticate"] == 'Bearer realm="quart_app", error="invalid_token"'
        )
        assert (await refused.get_json())["type"] == PROBLEM + "unauthorized"
        listed = await keyed(app, "qa_test-admin-key-0123456789abcdefghij").get(
            f"/users/{user_id}/keys"
        )
        assert (await listed.get_json())["items"][0]["revoked_at"] is not None


async def test_an_expired_key_is_refused(app: Quart) -> None:
    user_id, secret = await new_user(app, "ada@example.com")
    async with app_state(app).database.sessionmaker() as session:
        await session.execute(text("UPDATE api_keys SET expires_at = '2000-01-01 00:00:00'"))
        await session.commit()
    refused = await keyed(app, secret).get(f"/users/{user_id}")
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]


async def test_a_key_cannot_grant_what_it_lacks_and_key_creation_is_not_replayable(
    app: Quart,
) -> None:
    user_id, secret = await new_user(app, "ada@example.com")
    me = keyed(app, secret)
    escalated = await me.post(f"/users/{user_id}/keys", json={"scopes": ["admin"]})
    assert escalated.status_code == 403
    assert (await escalated.get_json())["type"] == PROBLEM + "insufficient-scope"
    replayable = await me.post(f"/users/{user_id}/keys", json={}, headers={"Idempotency-Key": "k1"})
    assert replayable.status_code == 400
    assert len((await (await me.get(f"/users/{user_id}/keys")).get_json())["items"]) == 1


async def test_creating_users_needs_an_admin_key_unless_sign_up_is_open(
    overrides: dict[str, Any],
) -> None:
    app = create_app(overrides)
    async with app.test_app():
        _, secret = await new_user(app, "ada@example.com")
        denied = await keyed(app, secret).post("/users", json={"name": "B", "email": "b@x.org"})
        assert denied.status_code == 403
        anonymous = await keyed(app, None).post("/users", json={"name": "B", "email": "b@x.org"})
        assert anonymous.status_code == 401
    app = create_app({**overrides, "OPEN_SIGNUP": True})
    async with app.test_app():
        made = await keyed(app, None).post("/users", json={"name": "C", "email": "c@x.org"})
        assert made.status_code == 201
        body = await made.get_json()
        mine = keyed(app, body["key"]["secret"])
        assert (await mine.get(f"/users/{body['id']}")).status_code == 200
        assert (await mine.put("/files/notes.txt", data=b"hello")).status_code == 201
        taken = await keyed(app, None).post("/users", json={"name": "C", "email": "C@x.org"})
        assert taken.status_code == 409
        assert "existing" not in await taken.get_json()  # only an admin learns who


def test_an_admin_key_shorter_than_32_characters_stops_startup() -> None:
    with pytest.raises(ConfigError, match="ADMIN_KEY must be at least 32 characters"):
        load_settings(environ={"QUART_APP_ADMIN_KEY": "short"})


async def test_the_operator_commands_make_a_user_and_a_working_key(
    overrides: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in overrides.items():
        monkeypatch.setenv(f"QUART_APP_{name}", str(value))
    assert await asyncio.to_thread(main, ["migrate"]) == 0
    argv = ["users", "create", "--name", "Ada", "--email", "ada@example.com"]
    assert await asyncio.to_thread(main, argv) == 0
    assert "user 1 created" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["keys", "create", "--user", "1", "--scope", "read"]) == 0
    secret = capsys.readouterr().out.splitlines()[0]
    assert await asyncio.to_thread(main, ["keys", "create", "--user", "9"]) == 1
    assert "there is no user 9" in capsys.readouterr().err
    app = create_app(overrides)
    async with app.test_app():
        reader = keyed(app, secret)
        assert (await reader.get("/users/1")).status_code == 200
        assert (await reader.put("/files/x", data=b"x")).status_code == 403


async def test_rows_made_before_accounts_belong_to_the_operator(
    overrides: dict[str, Any], tmp_path: Path
) -> None:
    """A database made by the release before accounts (schema 0004) with a
    file, a batch, an upload and an Idempotency-Key record in it."""
    settings = load_settings(overrides, environ={})
    (tmp_path / "instance").mkdir(exist_ok=True)
    engine = create_async_engine(settings.database_url)
    await migrate_to(engine, settings, "0004_idempotency")
    # Naive UTC, as the schema keeps times on both dialects; now, so that
    # the Idempotency-Key record is not yet old enough to be purged.
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    later = datetime(2099, 1, 1)
    async with engine.begin() as connection:
        for statement in (
            "INSERT INTO users (name, email, created_at) VALUES ('Ada', 'ada@example.com', :t)",
            "INSERT INTO blobs (sha256, size, created_at) VALUES ('" + "0" * 64 + "', 3, :t)",
            "INSERT INTO batches (id, created_at) VALUES ('b1', :t)",
            "INSERT INTO files (id, filename, content_type, size, sha256, batch_id, created_at,"
            " updated_at) VALUES ('f1', 'a.txt', 'text/plain', 3, '"
            + "0" * 64
            + "', 'b1', :t, :t)",
            "INSERT INTO uploads (id, length, received, filename, content_type, created_at,"
            " expires_at) VALUES ('u1', 10, 0, 'u.bin', 'application/octet-stream', :t, :later)",
            "INSERT INTO idempotency_records (owner, key, created_at)"
            " VALUES ('anonymous', 'k', :t)",
        ):
            await connection.execute(text(statement), {"t": now, "later": later})
    await engine.dispose()
    app = create_app(overrides)  # migrates to head at startup
    async with app.test_app():
        async with app_state(app).database.sessionmaker() as session:
            owners = {
                "files": set(await session.scalars(select(File.owner_id))),
                "uploads": set(await session.scalars(select(Upload.owner_id))),
                "batches": set(await session.scalars(text("SELECT owner_id FROM batches"))),
                "idempotency": set(
                    await session.scalars(text("SELECT owner FROM idempotency_records"))
                ),
                "operator": set(
                    await session.scalars(
                        text("SELECT id FROM users WHERE email = :e"), {"e": OPERATOR_EMAIL}
                    )
                ),
            }
        assert owners == {
            "files": {0},
            "uploads": {0},
            "batches": {0},
            "idempotency": {"0"},
            "operator": {0},
        }
        admin = keyed(app, "qa_test-admin-key-0123456789abcdefghij")
        assert (await admin.get("/files/f1")).status_code == 200
        assert (await admin.get("/users/1")).status_code == 200
        _, secret = await new_user(app, "bob@example.com")
        assert (await keyed(app, secret).get("/files/f1")).status_code == 404


async def test_the_accounts_migration_goes_down_and_up_again_with_data(
    overrides: dict[str, Any],
) -> None:
    app = create_app(overrides)
    async with app.test_app():
        client = as_quart_client(app.test_client())
        assert (await client.put("/files/kept.txt", data=b"kept")).status_code == 201
        body = multipart(part("file", b"a", "a.txt"), part("file", b"b", "b.txt"))
        many = await client.post("/files", data=body, headers=multipart_headers())
        assert many.status_code == 201 and "/batches/" in many.headers["Location"]
    settings = load_settings(overrides, environ={})
    engine = create_async_engine(settings.database_url)
    await migrate_to(engine, settings, "0004_idempotency")
    async with engine.connect() as connection:
        ids = set(await connection.scalars(text("SELECT id FROM files")))
        columns = await connection.run_sync(
            lambda sync: [column["name"] for column in inspect(sync).get_columns("files")]
        )
    await engine.dispose()
    assert "kept.txt" in ids and "owner_id" not in columns
    app = create_app(overrides)
    async with app.test_app():
        client = as_quart_client(app.test_client())
        assert (await client.get("/files/kept.txt/content")).status_code == 200
