"""FastAPI the way its docs show: ``UploadFile`` for multipart (fsync
before the 201, like ours) and ``request.stream()`` for PUT.

Run: uvicorn bench.peers.fastapi_app:app with PEER_DIR set."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from fastapi import FastAPI, Request, UploadFile

ROOT = Path(os.environ.get("PEER_DIR", "/tmp/peer-fastapi"))
ROOT.mkdir(parents=True, exist_ok=True)
app = FastAPI()


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
