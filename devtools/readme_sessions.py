"""The README's shell sessions, run against a real server.

Every fenced block in README.md whose lines start with ``$ `` is a session:
its commands run top to bottom in bash against a fresh server (a temp
directory with the files the sessions name), and each command's output is
compared with the one printed under it: the status line, the header names,
the shape of a JSON body (its keys, recursively), and any other body
exactly. What the server makes up (ids, keys, times, request ids, sha256s)
is learnt from each answer, by comparing it with the printed one, and
substituted into the commands that follow, as a reader would.

``python -m devtools.readme_sessions --write`` runs them and prints real
outputs into README.md (the way the sessions are kept current).

Variables a session may use: ``$ADMIN`` (an admin key), ``$KEY`` (a read and
write key of a user made for the session, only when the session names it)
and ``$AUTH`` (``Authorization: Bearer $KEY``).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devtools import PROJECT_ROOT
from devtools.auth import TEST_ADMIN_KEY, bearer
from devtools.server import RunningServer, start_server

README = PROJECT_ROOT / "README.md"
SHOWN_URL = "http://127.0.0.1:8000"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
# Values a server makes up, learnt from answers and substituted onward.
VOLATILE = re.compile(
    r"dl_[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]{43}|dl_[A-Za-z0-9_-]{16}"
    r"|qa_[A-Za-z0-9_-]{43}|key_[A-Za-z0-9_-]{16}|[A-Za-z0-9_-]{22}|[0-9a-f]{64}|[0-9a-f]{32}"
    r"|eyJ[A-Za-z0-9_.-]+"
)
DATE_HEADERS = {"date", "last-modified", "x-request-id", "upload-expires", "content-length"}

FILES = {
    "report.txt": b"Quarterly report.\n",
    "data.csv": b"a,b\n1,2\n",
    "photo.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) + b"\xff\xd9" * 20,
    "hello.txt": b"hello, resumable world\n",
    "a/hello.txt": b"hello\n",
    "a/docs/notes.md": b"# notes\n",
}


@dataclass
class Command:
    line: int  # where it starts in README.md
    text: str  # as printed, continuation lines joined
    shown: str  # the output printed under it


@dataclass
class Session:
    start: int
    end: int
    commands: list[Command] = field(default_factory=list)

    def uses(self, name: str) -> bool:
        return any(f"${name}" in c.text or f"${{{name}}}" in c.text for c in self.commands)


def sessions(text: str) -> list[Session]:
    found = []
    for match in FENCE.finditer(text):
        body = match.group(2)
        if not re.search(r"^\$ ", body, re.M):
            continue
        session = Session(match.start(2), match.end(2))
        lines = body.splitlines(keepends=True)
        first_line = text.count("\n", 0, match.start(2)) + 1
        i = 0
        while i < len(lines):
            if not lines[i].startswith("$ "):
                i += 1
                continue
            start = i
            command = lines[i][2:]
            while command.rstrip("\n").endswith("\\") and i + 1 < len(lines):
                i += 1
                command += lines[i]
            i += 1
            output = []
            while i < len(lines) and not lines[i].startswith("$ "):
                output.append(lines[i])
                i += 1
            session.commands.append(Command(first_line + start, command, "".join(output)))
        found.append(session)
    return found


def prepare_directory(root: Path) -> None:
    for name, data in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "dl").mkdir(exist_ok=True)
    with zipfile.ZipFile(root / "photos.zip", "w") as archive:
        archive.write(root / "a/hello.txt", "hello.txt")
        archive.write(root / "a/docs/notes.md", "docs/notes.md")


def user_key(server: RunningServer) -> str:
    with httpx.Client(base_url=server.url, headers=bearer(), timeout=30) as admin:
        user = admin.post("/users", json={"name": "Reader", "email": "reader@example.com"})
        key = admin.post(f"/users/{user.json()['id']}/keys", json={})
    secret: str = key.json()["secret"]
    return secret


def split_output(output: str) -> tuple[str, list[str], str]:
    """(status line, header names, body) of curl -i output; plain output is
    all body."""
    if not output.startswith("HTTP/"):
        return "", [], output
    blocks = output.split("\n\n", 1) if "\n\n" in output else [output, ""]
    # curl -i shows a 100 Continue head first; the final head is the answer.
    while blocks[1].startswith("HTTP/"):
        blocks = blocks[1].split("\n\n", 1) if "\n\n" in blocks[1] else [blocks[1], ""]
    head = blocks[0].splitlines()
    names = sorted(h.split(":", 1)[0].lower() for h in head[1:] if ":" in h)
    return head[0].strip(), names, blocks[1]


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


def json_body(body: str) -> Any:
    try:
        return json.loads(body.strip())
    except ValueError:
        return None


def differences(shown: str, got: str, mapping: dict[str, str]) -> list[str]:
    """Where an answer differs from the printed one, beyond made-up values
    (``mapping``: printed -> real)."""
    problems = []
    shown_status, shown_names, shown_body = split_output(shown)
    status, names, body = split_output(got)
    if shown_status != status:
        problems.append(f"status {status!r}, README shows {shown_status!r}")
    if set(shown_names) - set(names):
        problems.append(f"headers missing: {sorted(set(shown_names) - set(names))}")
    shown_json, got_json = json_body(shown_body), json_body(body)
    if shown_json is not None or got_json is not None:
        if shape(shown_json) != shape(got_json):
            problems.append(f"body shape {shape(got_json)}, README shows {shape(shown_json)}")
    elif substitute(shown_body, mapping).strip() != body.strip():
        problems.append(f"body {body.strip()[:200]!r}, README shows {shown_body.strip()[:200]!r}")
    return problems


def _headers(output: str) -> dict[str, str]:
    if not output.startswith("HTTP/"):
        return {}
    head = output.split("\n\n")
    while len(head) > 1 and head[1].startswith("HTTP/"):
        head = head[1:]
    return {
        line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip()
        for line in head[0].splitlines()[1:]
        if ":" in line
    }


def _pair(old: str, new: str, mapping: dict[str, str]) -> None:
    olds, news = VOLATILE.findall(old), VOLATILE.findall(new)
    if len(olds) != len(news):
        return
    for a, b in zip(olds, news, strict=True):
        if a != b and a not in mapping:
            mapping[a] = b
    for a, b in zip(
        re.findall(r"/users/(\d+)", old), re.findall(r"/users/(\d+)", new), strict=False
    ):
        if a != b:
            mapping[f"/users/{a}"] = f"/users/{b}"


def _walk(old: Any, new: Any, mapping: dict[str, str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old.keys() & new.keys():
            if key == "id" and isinstance(old[key], int) and old[key] != new[key]:
                mapping[f"/users/{old[key]}"] = f"/users/{new[key]}"
            _walk(old[key], new[key], mapping)
    elif isinstance(old, list) and isinstance(new, list):
        for a, b in zip(old, new, strict=False):
            _walk(a, b, mapping)
    elif isinstance(old, str) and isinstance(new, str):
        _pair(old, new, mapping)


def learn(shown: str, got: str, mapping: dict[str, str]) -> None:
    """Pair the made-up values of the printed output with the real ones:
    header by header, JSON member by member, else token by token when the
    two have as many."""
    old_headers, new_headers = _headers(shown), _headers(got)
    for name in old_headers.keys() & new_headers.keys():
        if name not in ("date", "x-request-id"):
            _pair(old_headers[name], new_headers[name], mapping)
    old_body, new_body = split_output(shown)[2], split_output(got)[2]
    old_json, new_json = json_body(old_body), json_body(new_body)
    if old_json is not None and new_json is not None:
        _walk(old_json, new_json, mapping)
    elif old_json is None and new_json is None:
        _pair(old_body, new_body, mapping)


def substitute(text: str, mapping: dict[str, str]) -> str:
    for old in sorted(mapping, key=len, reverse=True):
        text = text.replace(old, mapping[old])
    return text


@dataclass
class Result:
    command: Command
    output: str
    problems: list[str]
    mapping: dict[str, str]  # what was learnt up to and including this answer


def run_session(session: Session, root: Path) -> list[Result]:
    server = start_server(root / "server")
    try:
        work = root / "work"
        work.mkdir()
        prepare_directory(work)
        env = {**os.environ, **server.env, "ADMIN": TEST_ADMIN_KEY}
        assigns_key = any(c.text.startswith("KEY=") for c in session.commands)
        if (session.uses("KEY") or session.uses("AUTH")) and not assigns_key:
            env["KEY"] = user_key(server)
            env["AUTH"] = f"Authorization: Bearer {env['KEY']}"
        mapping: dict[str, str] = {}
        assignments: list[str] = []
        results = []
        for command in session.commands:
            text = substitute(command.text, mapping).replace(SHOWN_URL, server.url)
            text = text.replace(".venv/bin/python", sys.executable)
            script = "\n".join([*assignments, text])
            done = subprocess.run(
                ["bash", "-c", script], cwd=work, env=env, capture_output=True, timeout=60
            )
            output = (done.stdout + done.stderr).decode(errors="replace").replace("\r\n", "\n")
            output = output.replace(server.url, SHOWN_URL).replace(
                server.url.replace("http://", ""), "127.0.0.1:8000"
            )
            if re.match(r"^[A-Z_]+=", command.text):
                assignments.append(text)
            learn(command.shown, output, mapping)
            results.append(
                Result(command, output, differences(command.shown, output, mapping), dict(mapping))
            )
        return results
    finally:
        server.stop()


def run_all(text: str) -> list[tuple[Session, list[Result]]]:
    done = []
    for session in sessions(text):
        with tempfile.TemporaryDirectory() as root:
            done.append((session, run_session(session, Path(root))))
    return done


def rewrite(text: str, done: list[tuple[Session, list[Result]]]) -> str:
    out = io.StringIO()
    position = 0
    for session, results in done:
        out.write(text[position : session.start])
        learnt: dict[str, str] = {}
        for result in results:
            # The command as it ran (with what earlier answers made up), so
            # that the session reads consistently with its new answers.
            out.write("$ " + substitute(result.command.text, learnt))
            learnt = result.mapping
            body = result.output
            if body and not body.endswith("\n"):
                body += "\n"
            if result.command.shown.endswith("\n\n") and not body.endswith("\n\n"):
                body += "\n"
            out.write(body)
        position = session.end
    out.write(text[position:])
    return out.getvalue()


def main(argv: list[str]) -> int:
    text = README.read_text()
    done = run_all(text)
    if "--write" in argv:
        README.write_text(rewrite(text, done))
        return 0
    failed = 0
    for _, results in done:
        for result in results:
            for problem in result.problems:
                failed += 1
                print(f"README.md:{result.command.line}: {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
