"""A tus PATCH cut off by the client keeps every byte that arrived, by
design: the bytes still buffered when the disconnect comes are read before
the handler is let go (server_internals.BackPressureHTTPConnection), not
kept or lost by the order in which tasks happen to run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from quart import Quart
from quart.testing import QuartClient

from quart_app.storage.local import LocalPartialWriter

TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = 64 * 1024


@pytest.mark.local_storage_only  # slows the local writer down
async def test_bytes_queued_when_the_client_hangs_up_are_kept(
    app: Quart, client: QuartClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await client.post("/uploads", headers={**TUS, "Upload-Length": str(CHUNK * 10)})
    assert created.status_code == 201
    location = created.headers["Location"].split("://", 1)[1].split("/", 1)[1]
    path = "/" + location
    written = asyncio.Event()
    write = LocalPartialWriter.write

    async def slow_write(self: LocalPartialWriter, data: bytes) -> None:
        # A slow disk: the disconnect arrives while bytes wait in the body
        # buffer, and before this write has counted them.
        await asyncio.sleep(0.2)
        await write(self, data)
        written.set()

    monkeypatch.setattr(LocalPartialWriter, "write", slow_write)
    headers: dict[str, Any] = {
        **TUS,
        "Upload-Offset": "0",
        "Content-Type": "application/offset+octet-stream",
    }
    async with client.request(path, method="PATCH", headers=headers) as connection:
        for _ in range(3):
            await connection.send(b"x" * CHUNK)
        await asyncio.sleep(0.05)  # queued in the body buffer
        await connection.disconnect()
    head = await client.head(path, headers=TUS)
    assert head.headers["Upload-Offset"] == str(3 * CHUNK)
    assert written.is_set()
