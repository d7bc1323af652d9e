"""Building request bodies and inspecting what an app left behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quart import Quart
from sqlalchemy import func, select

from quart_app.db.models import Blob, File
from quart_app.state import app_state

BOUNDARY = "----quartappboundary7MA4YWxkTrZu0gW"


def part(
    name: str, data: bytes, filename: str | None = None, content_type: str | None = None
) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"Content-Disposition: {disposition}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return f"--{BOUNDARY}\r\n{head}\r\n".encode() + data + b"\r\n"


def multipart(*parts: bytes, boundary: str = BOUNDARY) -> bytes:
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def multipart_headers(boundary: str = BOUNDARY) -> dict[str, str]:
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def count_rows(app: Quart, model: Any) -> int:
    async with app_state(app).database.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def blob_files(storage: Path) -> list[Path]:
    return [p for p in (storage / "blobs").rglob("*") if p.is_file()]


def temp_files(storage: Path) -> list[Path]:
    return [p for d in ("tmp", "trash") for p in (storage / d).iterdir()]


async def assert_nothing_stored(app: Quart, storage: Path) -> None:
    assert await count_rows(app, File) == 0
    assert await count_rows(app, Blob) == 0
    assert blob_files(storage) == []
    assert temp_files(storage) == []
