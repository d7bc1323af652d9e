"""FastAPI the way its docs show: ``UploadFile`` for multipart (fsync
before the 201, like ours), ``request.stream()`` for PUT, and a pydantic
model into async SQLAlchemy for users (as stock Quart's peer does).

Run: uvicorn --loop uvloop --http httptools bench.peers.fastapi_app:app
with PEER_DIR set (bench/servers.py): the deployment FastAPI's docs advise."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, UploadFile
from pydantic import BaseModel
from sqlalchemy import String
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROOT = Path(os.environ.get("PEER_DIR", "/tmp/peer-fastapi"))
ROOT.mkdir(parents=True, exist_ok=True)
engine = create_async_engine(f"sqlite+aiosqlite:///{ROOT / 'db.sqlite3'}")
Session = async_sessionmaker(engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(254), unique=True)


class UserIn(BaseModel):
    name: str
    email: str


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield


app = FastAPI(lifespan=lifespan)


@app.post("/files", status_code=201)
def upload(file: UploadFile) -> dict[str, str]:
    path = ROOT / uuid.uuid4().hex
    with path.open("wb") as handle:
        shutil.copyfileobj(file.file, handle, 1024 * 1024)
        handle.flush()
        os.fsync(handle.fileno())
    return {"id": path.name}


@app.put("/files/{name}", status_code=201)
async def put(name: str, request: Request) -> dict[str, str]:
    path = ROOT / uuid.uuid4().hex
    with path.open("wb") as handle:
        async for chunk in request.stream():
            handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return {"id": path.name}


@app.post("/users", status_code=201)
async def create_user(data: UserIn) -> dict[str, object]:
    async with Session() as session, session.begin():
        user = User(name=data.name, email=data.email)
        session.add(user)
    return {"id": user.id, "name": user.name, "email": user.email}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
