"""``python -m quart_app smoke URL --key KEY``: a short end-to-end run
against a running server, as a client sees it.

With an admin key it creates a user and a key of theirs, then as that user
uploads a file by multipart (with an Idempotency-Key, then replays it), one
by PUT and one by tus (creation, two PATCHes, HEAD), downloads each and
compares the bytes, and deletes what it made: the files and the key (users
are never deleted; the user stays, with nothing and no working key). One
line per step; exit status 1 naming the step that failed (what it made is
removed still), 0 when every step passed.

Standard library only (http.client): the runtime install has no HTTP
client, and an operator runs this where the service is installed.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import secrets
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

TIMEOUT_SECONDS = 30.0
FILE_BYTES = 256 * 1024 + 7  # not a round size: a cut or padded body shows
TUS_VERSION = "1.0.0"


class StepFailed(Exception):
    """What went wrong in a step, in one line."""


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise StepFailed(f"answer is not JSON: {self.body[:200]!r}") from None

    def expect(self, *statuses: int) -> Answer:
        if self.status not in statuses:
            problem = self.body[:300].decode(errors="replace")
            raise StepFailed(
                f"expected {' or '.join(map(str, statuses))}, got {self.status}: {problem}"
            )
        return self


@dataclass
class Client:
    base: str
    key: str
    timeout: float = TIMEOUT_SECONDS

    def url(self, target: str) -> urllib.parse.SplitResult:
        return urllib.parse.urlsplit(urllib.parse.urljoin(self.base + "/", target))

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
    ) -> Answer:
        """One request on a connection of its own (``target``: a path below
        the base URL, or an absolute URL such as a Location)."""
        url = self.url(target)
        kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        connection = kind(url.netloc, timeout=self.timeout)
        sent = {"Authorization": f"Bearer {key or self.key}", **(headers or {})}
        path = url.path + (f"?{url.query}" if url.query else "")
        try:
            connection.request(method, path or "/", body=body, headers=sent)
            response = connection.getresponse()
            return Answer(response.status, response.headers, response.read())
        except (OSError, http.client.HTTPException) as error:
            raise StepFailed(f"{method} {url.geturl()}: {error or type(error).__name__}") from None
        finally:
            connection.close()


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "smoke-" + secrets.token_hex(12)
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


@dataclass
class Smoke:
    client: Client
    lines: list[str] = field(default_factory=list)
    user_key: str = ""
    key_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)  # file URL -> its bytes
    # The first multipart request (body, headers) and its answer, to replay.
    replay: tuple[bytes, dict[str, str], Answer] | None = None

    @contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        """Runs a step; the list it yields takes the ok line's detail."""
        detail: list[str] = []
        try:
            yield detail
        except StepFailed as error:
            self.lines.append(f"FAIL {name}: {error}")
            raise
        self.lines.append(f"ok   {name}: {' '.join(detail)}")

    def as_user(self, method: str, target: str, **kwargs: Any) -> Answer:
        return self.client.request(method, target, key=self.user_key, **kwargs)

    def reach(self, detail: list[str]) -> None:
        self.client.request("GET", "/healthz").expect(200)
        self.client.request("GET", "/readyz").expect(200)
        detail.append(f"{self.client.base} alive and ready")

    def create_user(self, detail: list[str]) -> None:
        email = f"smoke-{secrets.token_hex(6)}@example.com"
        answer = self.client.request(
            "POST",
            "/users",
            json.dumps({"name": "smoke test", "email": email}).encode(),
            {"Content-Type": "application/json"},
        ).expect(201)
        user = answer.json()
        location = answer.headers.get("Location") or ""
        if self.client.request("GET", location).expect(200).json().get("id") != user["id"]:
            raise StepFailed(f"{location} does not show the user just created")
        answer = self.client.request(
            "POST",
            f"/users/{user['id']}/keys",
            json.dumps({"scopes": ["read", "write"]}).encode(),
            {"Content-Type": "application/json"},
        ).expect(201)
        self.user_key, self.key_url = answer.json()["secret"], answer.headers.get("Location") or ""
        detail.append(f"user {user['id']} ({email}) and a read/write key of theirs")

    def upload_multipart(self, detail: list[str]) -> None:
        data = os.urandom(FILE_BYTES)
        body, content_type = multipart("smoke-multipart.bin", data)
        headers = {"Content-Type": content_type, "Idempotency-Key": "smoke-" + secrets.token_hex(8)}
        first = self.as_user("POST", "/files", body=body, headers=headers).expect(201)
        self._created(first, data)
        self.replay = (body, headers, first)
        detail.append(first.headers.get("Location") or "")

    def replay_idempotency_key(self, detail: list[str]) -> None:
        if self.replay is None:
            raise StepFailed("no first request to replay")
        body, headers, first = self.replay
        again = self.as_user("POST", "/files", body=body, headers=headers).expect(201)
        if (
            again.headers.get("Location") != first.headers.get("Location")
            or again.body != first.body
        ):
            raise StepFailed("the replay answered with another file or another body")
        if again.headers.get("Idempotent-Replayed") != "true":
            raise StepFailed("the replay lacks Idempotent-Replayed: true")
        listed = self.as_user("GET", "/files?limit=100").expect(200).json()["items"]
        if len(listed) != 1:
            raise StepFailed(f"the new user has {len(listed)} files after the replay, not 1")
        detail.append("same 201, Location and body; nothing new stored")

    def upload_put(self, detail: list[str]) -> None:
        data = os.urandom(FILE_BYTES)
        target = f"/files/smoke-{secrets.token_hex(8)}"
        answer = self.as_user(
            "PUT", target, body=data, headers={"Content-Type": "application/octet-stream"}
        ).expect(201)
        self._created(answer, data)
        detail.append(answer.headers.get("Location") or "")

    def upload_tus(self, detail: list[str]) -> None:
        data = os.urandom(FILE_BYTES)
        name = base64.b64encode(b"smoke-tus.bin").decode()
        tus = {"Tus-Resumable": TUS_VERSION}
        created = self.as_user(
            "POST",
            "/uploads",
            headers={**tus, "Upload-Length": str(len(data)), "Upload-Metadata": f"filename {name}"},
        ).expect(201)
        upload = created.headers.get("Location") or ""
        half = len(data) // 2
        for start, end in ((0, half), (half, len(data))):
            patched = self.as_user(
                "PATCH",
                upload,
                body=data[start:end],
                headers={
                    **tus,
                    "Upload-Offset": str(start),
                    "Content-Type": "application/offset+octet-stream",
                },
            ).expect(204)
            if patched.headers.get("Upload-Offset") != str(end):
                raise StepFailed(
                    f"PATCH left Upload-Offset {patched.headers.get('Upload-Offset')}, not {end}"
                )
        head = self.as_user("HEAD", upload, headers=tus).expect(200, 204)
        if head.headers.get("Upload-Offset") != str(len(data)):
            raise StepFailed(f"HEAD says Upload-Offset {head.headers.get('Upload-Offset')}")
        file_url = upload.replace("/uploads/", "/files/")
        self.files[file_url] = data
        detail.append(f"{upload}, two PATCHes, became {file_url}")

    def download(self, detail: list[str]) -> None:
        for url, data in self.files.items():
            content = self.as_user("GET", url + "/content").expect(200).body
            if content != data:
                raise StepFailed(
                    f"{url}/content: {len(content)} bytes, not the {len(data)} uploaded"
                )
        detail.append(f"{len(self.files)} file(s) read back identical")

    def delete(self, detail: list[str]) -> None:
        for url in list(self.files):
            self.as_user("DELETE", url).expect(204)
            self.as_user("GET", url).expect(404)
            del self.files[url]
        if self.key_url:
            self.client.request("DELETE", self.key_url).expect(204)
            self.key_url = ""
        detail.append("the files and the key (the user stays: users are never deleted)")

    def _created(self, answer: Answer, data: bytes) -> None:
        location = answer.headers.get("Location") or ""
        self.files[location] = data
        if answer.json().get("sha256") != hashlib.sha256(data).hexdigest():
            raise StepFailed(f"{location}: the sha256 the server reports is not the bytes'")

    def clean_up(self) -> list[str]:
        """After a failed step: remove what was made, as far as the server
        lets us; the URLs of what is left."""
        left = []
        for url in self.files:
            try:
                self.as_user("DELETE", url).expect(204, 404)
            except StepFailed:
                left.append(url)
        if self.key_url:
            try:
                self.client.request("DELETE", self.key_url).expect(204, 404)
            except StepFailed:
                left.append(self.key_url)
        return left


STEPS: list[tuple[str, Callable[[Smoke, list[str]], None]]] = [
    ("reach", Smoke.reach),
    ("create user", Smoke.create_user),
    ("multipart upload", Smoke.upload_multipart),
    ("idempotency replay", Smoke.replay_idempotency_key),
    ("PUT upload", Smoke.upload_put),
    ("tus upload", Smoke.upload_tus),
    ("download and compare", Smoke.download),
    ("delete", Smoke.delete),
]


def smoke(url: str, key: str, emit: Callable[[str], None] = print) -> int:
    """Run every step, printing each line as it ends; exit status."""
    run = Smoke(Client(url.rstrip("/"), key))
    for name, action in STEPS:
        try:
            with run.step(name) as detail:
                action(run, detail)
        except StepFailed:
            emit(run.lines[-1])
            left = run.clean_up()
            if left:
                emit(f"left behind: {' '.join(left)}")
            emit(f"smoke failed at step: {name}")
            return 1
        emit(run.lines[-1])
    emit("smoke passed")
    return 0
