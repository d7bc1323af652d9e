"""PostgreSQL with real processes: migrations that take turns under the
advisory lock, and two Hypercorn servers on one database (and one storage
directory), a client alternating between them."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from devtools import PROJECT_ROOT
from devtools.auth import bearer
from devtools.postgres import PostgresServer
from devtools.server import RunningServer, start_servers
from quart_app.db.postgresql import MIGRATION_LOCK_KEY
from quart_app.db.schema_version import head_revision


@pytest.fixture
def fresh_database(postgres: PostgresServer) -> Iterator[str]:
    """An empty database of this test's own (no schema): its SQLAlchemy URL."""
    name = postgres.create_database()
    try:
        yield postgres.url(name)
    finally:
        postgres.drop_database(name)


def app_env(database_url: str, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUART_APP_")}
    env.update(
        {
            "QUART_APP_DATABASE_URL": database_url,
            "QUART_APP_STORAGE_DIR": str(root / "uploads"),
            "QUART_APP_INSTANCE_DIR": str(root / "instance"),
            "PYTHONPATH": str(PROJECT_ROOT),
        }
    )
    return env


def start_migrate(database_url: str, root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "quart_app", "migrate"],
        env=app_env(database_url, root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


async def versions(database_url: str) -> list[str]:
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        rows = await connection.fetch("SELECT version_num FROM alembic_version")
    finally:
        await connection.close()
    return [row[0] for row in rows]


async def test_migrate_waits_for_the_migration_lock(fresh_database: str, tmp_path: Path) -> None:
    """While another holds the advisory lock, `migrate` waits (it would
    otherwise race the holder's DDL); released, it finishes."""
    holder = await asyncpg.connect(fresh_database.replace("+asyncpg", ""))
    try:
        await holder.execute(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
        migrate = start_migrate(fresh_database, tmp_path)
        await asyncio.sleep(3)
        assert migrate.poll() is None, migrate.communicate()[0]
        await holder.execute(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")
        output, _ = await asyncio.to_thread(migrate.communicate, timeout=60)
        assert migrate.returncode == 0, output
    finally:
        await holder.close()
    assert await versions(fresh_database) == [head_revision()]


async def test_two_migrates_at_once_on_a_fresh_database_both_succeed(
    fresh_database: str, tmp_path: Path
) -> None:
    runs = [start_migrate(fresh_database, tmp_path / str(i)) for i in range(2)]
    for run in runs:
        output, _ = await asyncio.to_thread(run.communicate, timeout=60)
        assert run.returncode == 0, output
        assert output.strip().endswith("database at head")
    assert await versions(fresh_database) == [head_revision()]


@pytest.fixture
def two_servers(fresh_database: str, tmp_path: Path) -> Iterator[list[RunningServer]]:
    """Two servers started together on a fresh database (each migrates at
    startup: they take turns), sharing the storage directory and the
    secret that signs paging cursors, as a deployment behind a proxy."""
    shared = {
        "QUART_APP_DATABASE_URL": fresh_database,
        "QUART_APP_STORAGE_DIR": str(tmp_path / "uploads"),
        "QUART_APP_SECRET_KEY": "shared-secret",
    }
    servers = start_servers([tmp_path / "server0", tmp_path / "server1"], shared)
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_two_servers_on_one_database(two_servers: list[RunningServer]) -> None:
    urls = [server.url for server in two_servers]

    async def run() -> None:
        async with httpx.AsyncClient(timeout=60, headers=bearer()) as client:

            def at(i: int) -> str:
                return urls[i % 2]

            # One email, twenty creates spread over both servers: one 201.
            same = await asyncio.gather(
                *(
                    client.post(f"{at(i)}/users", json={"name": "A", "email": "a@example.com"})
                    for i in range(20)
                )
            )
            assert sorted(r.status_code for r in same) == [201] + [409] * 19
            # Distinct creates alternate; none is lost or duplicated.
            created = await asyncio.gather(
                *(
                    client.post(f"{at(i)}/users", json={"name": "U", "email": f"u{i}@example.com"})
                    for i in range(30)
                )
            )
            assert [r.status_code for r in created] == [201] * 30
            ids = {r.json()["id"] for r in created}
            assert len(ids) == 30
            # Paging started on one server goes on at the other.
            seen: list[int] = []
            url: str | None = f"{urls[0]}/users?limit=7"
            hops = 0
            while url is not None:
                page = await client.get(url)
                assert page.status_code == 200
                seen += [user["id"] for user in page.json()["items"]]
                following = page.json()["next"]
                hops += 1
                if following is not None:
                    following = at(hops) + httpx.URL(following).raw_path.decode()
                url = following
            assert len(seen) == len(set(seen)) == 31 and ids <= set(seen)
            # An Idempotency-Key replays from the other server (for the same
            # origin, as behind a proxy: the Host is part of the fingerprint).
            body = {"name": "Ada", "email": "ada@example.com"}
            key = {"Idempotency-Key": "ada-1", "Host": "files.example"}
            first = await client.post(f"{urls[0]}/users", json=body, headers=key)
            again = await client.post(f"{urls[1]}/users", json=body, headers=key)
            assert (first.status_code, again.status_code) == (201, 201)
            assert again.headers["Idempotent-Replayed"] == "true"
            assert again.content == first.content
            # Identical uploads on both servers: one blob, every file readable.
            data = os.urandom(100_000)
            uploads = await asyncio.gather(
                *(client.put(f"{at(i)}/files/same-{i}", content=data) for i in range(10))
            )
            assert [r.status_code for r in uploads] == [201] * 10
            for i in range(10):
                content = await client.get(f"{at(i + 1)}/files/same-{i}/content")
                assert content.content == data
            # tus: PATCHes alternate between the servers.
            whole = os.urandom(300_000)
            create = await client.post(
                f"{urls[0]}/uploads",
                headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(len(whole))},
            )
            assert create.status_code == 201
            path = httpx.URL(create.headers["Location"]).path
            for i, offset in enumerate(range(0, len(whole), 100_000)):
                patch = await client.patch(
                    f"{at(i + 1)}{path}",
                    content=whole[offset : offset + 100_000],
                    headers={
                        "Tus-Resumable": "1.0.0",
                        "Upload-Offset": str(offset),
                        "Content-Type": "application/offset+octet-stream",
                    },
                )
                assert patch.status_code == 204, patch.text
            file_id = path.rsplit("/", 1)[1]
            stored = await client.get(f"{urls[0]}/files/{file_id}")
            assert stored.json()["sha256"] == hashlib.sha256(whole).hexdigest()

    asyncio.run(run())
    # The operator's check, against the shared database and storage: clean.
    server = two_servers[0]
    check = subprocess.run(
        [sys.executable, "-m", "quart_app", "check"],
        env=server.env, capture_output=True, text=True, cwd=server.root,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "all is well" in check.stdout
