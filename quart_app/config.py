"""Settings: defaults, ``QUART_APP_*`` environment variables, test overrides.

Every setting is a field of :class:`Settings` with its unit in the comment.
The environment variable for field ``X`` is ``QUART_APP_X``. ``create_app``
takes overrides keyed by field name; they win over the environment.

Relative paths (the defaults ``uploads/`` and ``instance/``, a relative
``QUART_APP_STORAGE_DIR``, an SQLite URL with a relative path) are resolved
against the current directory when the settings are loaded, and kept
absolute from then on: the startup line shows them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from quart_app.ops.startup import StartupError

ENV_PREFIX = "QUART_APP_"

MIN_ADMIN_KEY_CHARS = 32
GIB = 1024**3
MIB = 1024**2


class ConfigError(StartupError):
    """A setting has a value that cannot be used; startup stops (one line, a
    non-zero exit status: see ops/startup.py)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    # SQLAlchemy async URL. Default: SQLite file in instance/.
    DATABASE_URL: str = ""
    # Directory that holds blobs and upload temp files (when STORAGE_URL is empty).
    STORAGE_DIR: Path = dataclasses.field(default_factory=lambda: Path.cwd() / "uploads")
    # Where blobs live: empty for the local STORAGE_DIR, or s3://bucket/prefix
    # for an S3-compatible object store (endpoint, region and credentials from
    # the standard AWS_* variables).
    STORAGE_URL: str = ""
    # Bytes: part size of S3 multipart uploads (at least 5 MiB, as S3
    # requires); an upload holds about two parts in memory.
    S3_PART_BYTES: int = 16 * MIB
    # Directory for the default database and the generated secret key.
    INSTANCE_DIR: Path = dataclasses.field(default_factory=lambda: Path.cwd() / "instance")
    # Bring the database schema to head at startup (Alembic upgrade).
    AUTO_MIGRATE: bool = True
    # Bytes: largest stored file (inclusive). Also bounds tus Upload-Length.
    MAX_UPLOAD_BYTES: int = 5 * GIB
    # Bytes: multipart framing allowed on top of MAX_UPLOAD_BYTES per request.
    MAX_MULTIPART_OVERHEAD_BYTES: int = 1 * MIB
    # Bytes: largest JSON request body.
    MAX_JSON_BYTES: int = 1 * MIB
    # Bytes: the request head the app accepts: its target (path and query;
    # longer -> 414) and its header fields together (larger -> 431).
    MAX_HEADER_BYTES: int = 16 * 1024
    # Count: file parts in one multipart request (more -> 413).
    MAX_FILE_PARTS: int = 100
    # Count: text fields in one multipart request (more -> 413).
    MAX_FORM_FIELDS: int = 100
    # Bytes: one multipart text field's value (more -> 413).
    MAX_FORM_FIELD_BYTES: int = 64 * 1024
    # Characters: longest accepted client filename (longer -> 400).
    MAX_FILENAME_CHARS: int = 255
    # Seconds: a request body may stall this long between reads (-> 408).
    BODY_IDLE_TIMEOUT: float = 30.0
    # Seconds: whole-body deadline for one request (-> 408).
    BODY_DEADLINE: float = 3600.0
    # Bytes: request body buffered in the app before it stops reading the
    # socket (back-pressure). Hypercorn adds up to max_app_queue_size reads
    # (hypercorn.toml) of 256 KiB.
    BODY_BUFFER_BYTES: int = 1 * MIB
    # Bytes: writes to disk are batched to about this size per thread hop.
    WRITE_BATCH_BYTES: int = 1 * MIB
    # Bytes: blobs up to this size are kept in their database row, committed
    # with it, instead of a file each (two fsyncs per file) or an object each
    # (five requests to S3); 0 keeps every blob in the store. At most
    # WRITE_BATCH_BYTES on local disk, S3_PART_BYTES on S3.
    INLINE_BLOB_BYTES: int = 64 * 1024
    # Count: page size default and maximum for list endpoints.
    PAGE_SIZE_DEFAULT: int = 20
    PAGE_SIZE_MAX: int = 100
    # Seconds a resumable upload lives after its last PATCH (Upload-Expires).
    UPLOAD_EXPIRES_SECONDS: float = 24 * 3600.0
    # Count: resumable uploads whose running sha256 a worker keeps (least
    # recently used go first); the next PATCH of one that was dropped, or
    # that another worker served, rebuilds it by reading the partial back.
    UPLOAD_HASH_STATES: int = 4096
    # Seconds a PATCH's lease on its upload lasts (services/upload_leases.py);
    # renewed every third of it while bytes arrive. A server killed while
    # writing holds the upload this long: then another may take it over.
    UPLOAD_LEASE_SECONDS: float = 30.0
    # Seconds a signed download link lives when POST /files/{id}/links does
    # not say (``expires_in``), and the longest it may ask for.
    LINK_EXPIRES_SECONDS: float = 24 * 3600.0
    LINK_MAX_EXPIRES_SECONDS: float = 7 * 24 * 3600.0
    # Seconds between sweeps that remove expired resumable uploads, expired
    # download links and Idempotency-Key records past their time to live.
    UPLOAD_SWEEP_SECONDS: float = 60.0
    # Seconds an Idempotency-Key and its stored response are kept.
    IDEMPOTENCY_TTL_SECONDS: float = 24 * 3600.0
    # Origins allowed to call the API from a browser (CORS), comma-separated;
    # "*" for any. Empty: no CORS headers.
    CORS_ORIGINS: str = ""
    # Key that signs list cursors. Empty: generated once into INSTANCE_DIR.
    SECRET_KEY: str = ""
    # Python logging level name for the app's loggers.
    LOG_LEVEL: str = "INFO"
    # Seconds a connection may go with no byte moving either way before it
    # is closed. Replaces Hypercorn's read_timeout, which also cut responses
    # that a client was reading steadily (quart_app/edge/server_internals.py).
    IDLE_TIMEOUT: float = 60.0
    # Bytes per second: the slowest a request or response body may move,
    # measured over TRANSFER_RATE_WINDOW seconds. Slower: 408 for a request
    # body, the connection closed for a response. 0 turns the floor off.
    MIN_TRANSFER_RATE: int = 1024
    TRANSFER_RATE_WINDOW: float = 20.0
    # Seconds and bytes: after answering before the request body has all
    # arrived (412, 413, 404...), the server shuts its side and reads and
    # drops the rest of the body for at most this long / this much, so the
    # client sees the answer rather than a reset; then it closes.
    LINGER_SECONDS: float = 5.0
    LINGER_BYTES: int = 64 * MIB
    # Count: open connections per worker process. Past it a new connection
    # gets a 503 problem with Retry-After and is closed.
    MAX_CONNECTIONS: int = 1000
    # Host names (and IP literals), comma-separated, each optionally
    # *.domain (subdomains) and :port: the Hosts the server answers for;
    # any other gets a 400. Empty or *: any well-formed Host.
    ALLOWED_HOSTS: str = ""
    # IP addresses and CIDR networks, comma-separated: reverse proxies whose
    # Forwarded / X-Forwarded-For/-Proto/-Host are honoured when they are the
    # TCP peer. Empty: those headers are ignored.
    TRUSTED_PROXIES: str = ""
    # URL (absolute http/https, optional path prefix the proxy strips, no
    # query or fragment): where clients reach the app, e.g.
    # https://files.example.com. Every absolute URL is built from it. Empty:
    # from each request's scheme and Host.
    PUBLIC_URL: str = ""
    # Count: HTTP/2 requests one worker runs at once, over all its
    # connections (HTTP/1.1 is one request per connection and not counted).
    # Past it a new stream is refused with RST_STREAM(REFUSED_STREAM), which
    # a client may retry; it bounds what many HTTP/2 connections, each
    # within its own h2_max_concurrent_streams, make one worker hold.
    H2_MAX_STREAMS_PER_WORKER: int = 256
    # Seconds a request waits for the database (SQLite's busy timeout, this
    # process's write lock, a PostgreSQL connection) before it gets a 503 with
    # Retry-After; also bounds /readyz. Keep it under clients' own timeouts.
    DATABASE_TIMEOUT: float = 5.0
    # An admin API key from the environment (at least 32 characters; keep it
    # in a secret store). Empty: no such key; admin keys come from
    # `python -m quart_app keys create --scope admin`.
    ADMIN_KEY: str = ""
    # Anyone may create a user with POST /users, without a key; the answer
    # carries the new user's first key (read and write). Off: admin keys only.
    OPEN_SIGNUP: bool = False
    # The browser upload page at / (and its assets). Off: / is not served;
    # /docs, the API's own documentation, stays.
    UI: bool = True
    # Swagger UI at /docs. Off: /docs is not a route (404, as any unknown
    # URL); /openapi.json, which clients and tools read, stays.
    DOCS: bool = True
    # Seconds a worker trusts what it read about a key: a revoked key stops
    # working on every worker within this time. Also how often its last use
    # may be noted.
    KEY_CACHE_SECONDS: float = 5.0
    # Count: failed authentications one client address may make in a minute,
    # per worker; past it, keys it sends that the worker does not already
    # know get a 429 problem with Retry-After until the minute ends.
    AUTH_FAILURES_PER_MINUTE: int = 20
    # Count: import workers per server process (0: this server runs no
    # imports; others sharing the database do).
    IMPORT_WORKERS: int = 1
    # Seconds a worker holds an import before it must renew its lease; a
    # job whose worker died runs again on any worker once it lapses.
    IMPORT_LEASE_SECONDS: float = 30.0
    # Seconds an idle import worker waits before looking for queued jobs
    # (a job queued on the same process wakes it at once).
    IMPORT_POLL_SECONDS: float = 1.0
    # Limits on one archive: entries, bytes once expanded, and expansion
    # ratio (output / archive size, once past 1 MiB). Past any: the job fails.
    IMPORT_MAX_ENTRIES: int = 10_000
    IMPORT_MAX_TOTAL_BYTES: int = 10 * GIB
    IMPORT_MAX_RATIO: int = 100
    # Seconds an import job is kept after it ended (or, queued, before it
    # is dropped with its archive if no worker took it).
    IMPORT_EXPIRES_SECONDS: float = 24 * 3600.0
    # Bytes: what one account may store, counted by the files' sizes (a
    # file sharing another's bytes counts in full). 0: unlimited. An admin
    # sets another limit per user (PATCH /users/{id}).
    DEFAULT_QUOTA_BYTES: int = 0
    # Count: files one account may have. 0: unlimited; per user as above.
    DEFAULT_QUOTA_FILES: int = 0
    # PostgreSQL only (SQLite opens a file per connection and pools nothing):
    # count of connections each worker process keeps open, and how many more
    # it may open under load (closed again when returned). Each server's
    # workers * (POOL_SIZE + MAX_OVERFLOW) must fit PostgreSQL's
    # max_connections, with room for the operator commands.
    DATABASE_POOL_SIZE: int = 5
    DATABASE_MAX_OVERFLOW: int = 10
    # Seconds a request waits for a pooled connection when all are in use
    # (then 503 with Retry-After).
    DATABASE_POOL_TIMEOUT: float = 5.0
    # Seconds to open a new connection to PostgreSQL (then 503).
    DATABASE_CONNECT_TIMEOUT: float = 5.0
    # Seconds one statement may run on PostgreSQL (its statement_timeout;
    # then 503). Migrations are exempt.
    DATABASE_COMMAND_TIMEOUT: float = 30.0

    @property
    def database_url(self) -> str:
        if self.DATABASE_URL:
            return self.DATABASE_URL
        return f"sqlite+aiosqlite:///{(self.INSTANCE_DIR / 'quart_app.sqlite3').resolve()}"


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(name: str, source: str, kind: Any, value: Any) -> Any:
    """Turn one raw value into the field's type, naming the source on failure."""
    try:
        if kind in ("bool", bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError("expected one of 1/0, true/false, yes/no")
        if kind in ("int", int):
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            number = int(value)
            if number < 0:
                raise ValueError("must not be negative")
            return number
        if kind in ("float", float):
            seconds = float(value)
            if not seconds > 0:
                raise ValueError("must be greater than zero")
            return seconds
        if kind in ("Path", Path):
            return Path(os.path.abspath(Path(value).expanduser()))
        return str(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source} has an invalid value {value!r}: {error}") from None


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults, then ``QUART_APP_*`` variables, then ``overrides``."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, field in _FIELDS.items():
        env_name = ENV_PREFIX + name
        if env_name in environ:
            values[name] = _convert(name, env_name, field.type, environ[env_name])
    for name, value in (overrides or {}).items():
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r} in overrides")
        values[name] = _convert(name, f"override {name}", _FIELDS[name].type, value)
    if "DATABASE_URL" in values:
        values["DATABASE_URL"] = _absolute_database_url(values["DATABASE_URL"])
    settings = Settings(**values)
    if settings.PAGE_SIZE_DEFAULT < 1 or settings.PAGE_SIZE_DEFAULT > settings.PAGE_SIZE_MAX:
        raise ConfigError(f"{ENV_PREFIX}PAGE_SIZE_DEFAULT must be 1..PAGE_SIZE_MAX")
    if settings.LINK_EXPIRES_SECONDS > settings.LINK_MAX_EXPIRES_SECONDS:
        raise ConfigError(
            f"{ENV_PREFIX}LINK_EXPIRES_SECONDS must not be longer than "
            f"{ENV_PREFIX}LINK_MAX_EXPIRES_SECONDS"
        )
    if settings.LOG_LEVEL.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"{ENV_PREFIX}LOG_LEVEL has an invalid value {settings.LOG_LEVEL!r}")
    if settings.MIN_TRANSFER_RATE and settings.TRANSFER_RATE_WINDOW > settings.IDLE_TIMEOUT:
        # A body moving slowly shows progress once a window; a longer window
        # than the idle time would let the idle timeout cut it first.
        raise ConfigError(
            f"{ENV_PREFIX}TRANSFER_RATE_WINDOW must not be longer than {ENV_PREFIX}IDLE_TIMEOUT"
        )
    if settings.ADMIN_KEY and len(settings.ADMIN_KEY) < MIN_ADMIN_KEY_CHARS:
        raise ConfigError(
            f"{ENV_PREFIX}ADMIN_KEY must be at least {MIN_ADMIN_KEY_CHARS} characters "
            f"(it has {len(settings.ADMIN_KEY)}); make one with: "
            "python -c 'import secrets; print(\"qa_\" + secrets.token_urlsafe(32))'"
        )
    _check_storage_url(settings)
    _reject_db_inside_storage(settings)
    return settings


S3_MIN_PART_BYTES = 5 * MIB


def _check_storage_url(settings: Settings) -> None:
    url = settings.STORAGE_URL
    if url:
        scheme, _, rest = url.partition("://")
        bucket = rest.split("/", 1)[0]
        if scheme != "s3" or not bucket:
            raise ConfigError(
                f"{ENV_PREFIX}STORAGE_URL must be empty (the local directory) or s3://bucket/prefix"
            )
    if settings.S3_PART_BYTES < S3_MIN_PART_BYTES:
        raise ConfigError(
            f"{ENV_PREFIX}S3_PART_BYTES must be at least {S3_MIN_PART_BYTES} (5 MiB): "
            "S3 refuses smaller parts"
        )


def _absolute_database_url(url: str) -> str:
    """The URL, refused if SQLAlchemy cannot read it (not echoed: it may hold
    a password), with a relative SQLite path made absolute."""
    if not url:
        return url
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"{ENV_PREFIX}DATABASE_URL is not an SQLAlchemy URL") from None
    database = parsed.database or ""
    if (
        parsed.get_backend_name() != "sqlite"
        or database in ("", ":memory:")
        or database.startswith("file:")
        or os.path.isabs(database)
    ):
        return url
    return parsed.set(database=os.path.abspath(database)).render_as_string(hide_password=False)


def _reject_db_inside_storage(settings: Settings) -> None:
    url = settings.database_url
    if not url.startswith("sqlite"):
        return
    _, _, path = url.partition(":///")
    if not path or path.startswith(":memory:"):
        return
    storage = settings.STORAGE_DIR.resolve()
    db_path = Path(path.split("?", 1)[0]).resolve()
    if storage == db_path or storage in db_path.parents:
        raise ConfigError(
            f"{ENV_PREFIX}DATABASE_URL points inside {ENV_PREFIX}STORAGE_DIR; "
            "the database never lives inside the storage directory"
        )


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, type, default) rows, for the README and tests."""
    defaults = Settings()
    return [
        (ENV_PREFIX + name, str(field.type), repr(getattr(defaults, name)))
        for name, field in _FIELDS.items()
    ]
