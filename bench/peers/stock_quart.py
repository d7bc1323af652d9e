"""Stock Quart the way its docs show: ``await request.files`` and
``FileStorage.save`` for uploads (fsync before the 201, like ours), raw
``request.body`` for PUT, and async SQLAlchemy for users.

Run: hypercorn 'bench.peers.stock_quart:app' with PEER_DIR set."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from quart import Quart, request
from sqlalchemy import String
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROOT = Path(os.environ.get("PEER_DIR", "/tmp/peer-quart"))
ROOT.mkdir(parents=True, exist_ok=True)
app = Quart(__name__)
app.config["MAX_CONTENT_LENGTH"] = 8 * 1024**3
app.config["BODY_TIMEOUT"] = 3600
engine = create_async_engine(f"sqlite+aiosqlite:///{ROOT / 'db.sqlite3'}")
Session = async_sessionmaker(engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(254), unique=True)


@app.before_serving
async def create_tables() -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


@app.post("/files")
async def upload() -> tuple[dict[str, str], int]:
    files = await request.files
    path = ROOT / uuid.uuid4().hex
    await files["file"].save(path)
    _fsync(path)
    return {"id": path.name}, 201


@app.put("/files/<name>")
async def put(name: str) -> tuple[dict[str, str], int]:
    path = ROOT / uuid.uuid4().hex
    with path.open("wb") as handle:
        async for chunk in request.body:
            handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return {"id": path.name}, 201


@app.post("/users")
async def create_user() -> tuple[dict[str, object], int]:
    data = await request.get_json()
    async with Session() as session, session.begin():
        user = User(name=data["name"], email=data["email"])
        session.add(user)
    return {"id": user.id, "name": user.name, "email": user.email}, 201


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
