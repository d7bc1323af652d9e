"""One JSON log line per request, and the request id.

An ASGI middleware, not a Quart hook: only at the ASGI level are the real
bytes in and out of a streamed body known. ``X-Request-ID`` is taken from the
request when it is usable (sanitised, bounded) or generated, and echoed.

What a line says beyond the numbers: ``outcome`` (``answered``; ``client
hung up`` when the client left before the whole answer was sent, ``status``
then null if no answer had begun when it left, else the status it was
getting; ``no answer`` when the app ended without one and Hypercorn answered
500 itself), ``problem`` (the type of every problem answer), and ``query``
with the values of secret-looking parameters replaced (:func:`logged_query`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

from hypercorn.typing import ASGIReceiveCallable, ASGIReceiveEvent, ASGISendCallable, ASGISendEvent
from quart import Quart

from quart_app.config import Settings
from quart_app.edge.problem_details import PROBLEM_CONTENT_TYPE
from quart_app.services.download_links import LINK_ID_CHARS

REQUEST_ID_HEADER = b"x-request-id"
REQUEST_ID_MAX_CHARS = 128
PROBLEM_BODY_MAX_BYTES = 8192
SCOPE_KEY = "quart_app.request_id"
NOTES_KEY = "quart_app.log_notes"
_UNSAFE = re.compile(r"[^A-Za-z0-9._:@/+=-]")
# A download link's token is a credential in the path: only the link's id, at
# its start, is logged, whatever the answer was.
_LINK_TOKEN = re.compile(rf"^(/links/[^/.]{{0,{LINK_ID_CHARS}}})[^/]+")

# Query parameters whose values are credentials, by name (case-insensitive):
# ours have none, but a client or a proxy may add them (an S3 presigned URL's
# X-Amz-*, an OAuth access_token, an api_key), and the log is read by more
# people than the keys are given to.
_SECRET_PARAMETER = re.compile(
    r"key|token|signature|^sig$|secret|passw|credential|auth|session|^x-amz-", re.IGNORECASE
)
REDACTED = "REDACTED"
QUERY_MAX_CHARS = 1024

ANSWERED = "answered"
HUNG_UP = "client hung up"
NO_ANSWER = "no answer"

access_log = logging.getLogger("quart_app.access")


def sanitise_request_id(raw: bytes | None) -> str | None:
    """Keep a client's id when it is printable and short; else None."""
    if not raw:
        return None
    text = _UNSAFE.sub("", raw.decode("latin-1"))[:REQUEST_ID_MAX_CHARS]
    return text or None


def logged_path(path: str) -> str:
    """The path as the logs show it: a link's token cut to the link's id."""
    return _LINK_TOKEN.sub(r"\1...", path)


def logged_query(raw: bytes) -> str | None:
    """The query string as the logs show it: as sent, but for the value of
    every parameter whose name looks like a secret's, which is REDACTED;
    printable ASCII only, at most QUERY_MAX_CHARS characters; None if empty."""
    if not raw:
        return None
    pairs = []
    for pair in raw.decode("latin-1").split("&"):
        name, equals, _ = pair.partition("=")
        if equals and _SECRET_PARAMETER.search(unquote_plus(name)):
            pair = f"{name}={REDACTED}"
        pairs.append(pair)
    return _printable("&".join(pairs).encode("latin-1"), QUERY_MAX_CHARS)


def scope_request_id(scope: Any) -> str:
    return str(scope.get(SCOPE_KEY, "-"))


def note(scope: Any, **fields: Any) -> None:
    """Add fields to the request's access line (the key id, say). The notes
    dict is shared by every copy of the ASGI scope made below this middleware."""
    notes = scope.get(NOTES_KEY)
    if notes is not None:
        notes.update(fields)


# Called with a request's notes, method, status, seconds, bytes in and out
# once it is done with (edge/metrics.py): one measurement, two outputs.
RequestFinished = Callable[[dict[str, Any], str, int, float, int, int], None]


class RequestLogMiddleware:
    # Requests this process has begun and not yet logged, and has logged:
    # what a worker's shutdown line reports (ops/lifecycle.py).
    requests_in_flight = 0
    requests_finished = 0

    def __init__(self, app: Any, finished: RequestFinished | None = None) -> None:
        self.app = app
        self.finished = finished

    async def __call__(
        self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = sanitise_request_id(_raw_header(scope, REQUEST_ID_HEADER)) or uuid.uuid4().hex
        scope[SCOPE_KEY] = request_id
        notes: dict[str, Any] = {}
        scope[NOTES_KEY] = notes
        started = time.perf_counter()
        counts = {"in": 0, "out": 0}
        status: int | None = None
        outcome: str | None = None  # set once the answer ends or the client leaves
        problem = bytearray()  # the body of a problem response (small), for its type
        in_problem = False

        async def counting_receive() -> ASGIReceiveEvent:
            nonlocal outcome
            message = await receive()
            if message["type"] == "http.request":
                counts["in"] += len(message.get("body", b""))
            elif message["type"] == "http.disconnect" and outcome is None:
                outcome = HUNG_UP
            return message

        async def tagging_send(message: ASGISendEvent) -> None:
            nonlocal in_problem, status, outcome
            if message["type"] == "http.response.start":
                # An answer begun after the client left (a handler that read
                # what was buffered, then met the disconnect) reached nobody.
                status = message["status"] if outcome is None else None
                in_problem = status is not None and _is_problem(message["headers"])
                headers = [(k, v) for k, v in message["headers"] if k.lower() != REQUEST_ID_HEADER]
                headers.append((REQUEST_ID_HEADER, request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                counts["out"] += len(body)
                if in_problem and len(problem) < PROBLEM_BODY_MAX_BYTES:
                    problem.extend(body[: PROBLEM_BODY_MAX_BYTES - len(problem)])
                if not message.get("more_body", False) and outcome is None:
                    outcome = ANSWERED
            await send(message)

        RequestLogMiddleware.requests_in_flight += 1
        try:
            await self.app(scope, counting_receive, tagging_send)
        finally:
            seconds = time.perf_counter() - started
            RequestLogMiddleware.requests_in_flight -= 1
            RequestLogMiddleware.requests_finished += 1
            access_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": logged_path(scope["path"]),
                    "query": logged_query(scope.get("query_string", b"")),
                    "status": status,
                    "outcome": outcome or NO_ANSWER,
                    "duration_ms": round(seconds * 1000, 3),
                    "bytes_in": counts["in"],
                    "bytes_out": counts["out"],
                    "request_id": request_id,
                    "client": _client(scope),
                    "user_agent": _printable(_raw_header(scope, b"user-agent")),
                    "key_id": notes.get("key_id"),
                    "link_id": notes.get("link_id"),
                    "problem": _problem_type(problem) if in_problem else None,
                },
            )
            if self.finished is not None:
                # Metrics keep status 0 for "the client left before an answer".
                self.finished(
                    notes, scope["method"], status or 0, seconds, counts["in"], counts["out"]
                )


def _is_problem(headers: Any) -> bool:
    return any(
        k.lower() == b"content-type" and v.startswith(PROBLEM_CONTENT_TYPE.encode())
        for k, v in headers
    )


def _problem_type(body: bytes | bytearray) -> str | None:
    """The ``type`` of a problem document: the reason of every 4xx/5xx."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    kind = document.get("type") if isinstance(document, dict) else None
    return kind if isinstance(kind, str) else None


def _client(scope: Any) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


def _raw_header(scope: Any, name: bytes) -> bytes | None:
    return next((v for k, v in scope["headers"] if k.lower() == name), None)


def _printable(raw: bytes | None, limit: int = 256) -> str | None:
    """Header bytes as text, printable ASCII only, at most ``limit`` characters."""
    if raw is None:
        return None
    return "".join(ch for ch in raw.decode("latin-1") if " " <= ch <= "~")[:limit]


_RECORD_FIELDS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """A log record as one JSON object: time, level, logger, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """JSON lines to stderr for the quart_app loggers, and for Python's
    warnings (a RuntimeWarning would otherwise print plain text lines into
    the JSON stream), once per process."""
    logger = logging.getLogger("quart_app")
    logger.setLevel(level.upper())
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.propagate = False
    for target in (logger, warnings_logger):
        if not any(getattr(h, "quart_app_json", False) for h in target.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JSONFormatter())
            handler.quart_app_json = True  # type: ignore[attr-defined]
            target.addHandler(handler)


def init_app(app: Quart, settings: Settings, finished: RequestFinished | None = None) -> None:
    """JSON logs, and the access line of every request (outside every
    middleware but the trusted-proxy one, so it logs what the app saw);
    ``finished`` sees the same figures (the request metrics)."""
    configure_logging(settings.LOG_LEVEL)
    app.asgi_app = RequestLogMiddleware(app.asgi_app, finished)  # type: ignore[method-assign]
