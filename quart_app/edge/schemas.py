"""Pydantic request and response models (validation and OpenAPI)."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    RootModel,
    StringConstraints,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

# A client-chosen file id (PUT /files/{id}).
FILE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

# Idempotency-Key as documented: 1-255 visible ASCII characters (a quoted
# structured-field string is accepted too; see edge/idempotency.py).
IdempotencyKey = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[!-~]+$")
]


class UserCreate(BaseModel):
    """A new user. Unknown members are rejected so that a typo is not lost."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    email: Annotated[EmailStr, Field(max_length=254)]

    @field_validator("name")
    @classmethod
    def _no_control_characters(cls, value: str) -> str:
        if any(unicodedata.category(ch) == "Cc" for ch in value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("email")
    @classmethod
    def _lowercase(cls, value: str) -> str:
        return value.lower()


# A quota limit: bytes or files, 0 for none (the largest a column holds).
QuotaLimit = Annotated[int, Field(ge=0, le=2**63 - 1)]


class UsageOut(BaseModel):
    """What the user's files use now: bytes by the files' sizes, and files."""

    bytes: int
    files: int


class UserOut(BaseModel):
    id: int
    name: str
    email: str
    created_at: datetime
    quota_bytes: int = Field(description="Bytes the user may store; 0: unlimited.")
    quota_files: int = Field(description="Files the user may have; 0: unlimited.")
    usage: UsageOut


class QuotaUpdate(BaseModel):
    """An admin sets a user's limits: a number (0: unlimited), or null for
    the configured default. A member left out is left as it is."""

    model_config = ConfigDict(extra="forbid", strict=True)

    quota_bytes: QuotaLimit | None = None
    quota_files: QuotaLimit | None = None


class UserPage(BaseModel):
    items: list[UserOut]
    next: str | None


Scope = Literal["read", "write", "admin"]
# Longest a key may be asked to live: ten years, in seconds.
MAX_KEY_SECONDS = 10 * 365 * 24 * 3600


def _default_scopes() -> list[Scope]:
    return ["read", "write"]


class KeyCreate(BaseModel):
    """A new API key. ``scopes`` defaults to read and write; a key cannot
    grant a scope it does not have itself. ``expires_in``: seconds, or none
    for a key that lives until it is revoked; a key that expires cannot
    create one that outlives it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    scopes: list[Scope] = Field(default_factory=_default_scopes, min_length=1)
    expires_in: Annotated[int, Field(ge=1, le=MAX_KEY_SECONDS)] | None = None


class KeyOut(BaseModel):
    id: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    """The one answer that carries the secret: it is never shown again."""

    secret: str


class KeyList(BaseModel):
    items: list[KeyOut]
    next: str | None


class LinkCreate(BaseModel):
    """A new download link. ``expires_in``: seconds, at most
    LINK_MAX_EXPIRES_SECONDS; default LINK_EXPIRES_SECONDS."""

    model_config = ConfigDict(extra="forbid", strict=True)

    expires_in: Annotated[int, Field(ge=1)] | None = None


class LinkOut(BaseModel):
    """A download link. ``url`` (what downloads without a key) is shown only
    in the answer that creates the link; it starts with the link's ``id``."""

    id: str
    url: str | None
    file: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


class LinkList(BaseModel):
    items: list[LinkOut]
    next: str | None


class SignedUpUser(UserOut):
    """Open sign-up: the new user and its first key (read and write)."""

    key: KeyCreated


class PageQuery(BaseModel):
    limit: int | None = Field(default=None, ge=1, le=100)
    cursor: str | None = None


class LocationHeader(BaseModel):
    location: str


class LinkHeader(BaseModel):
    link: str | None = None


class Health(BaseModel):
    status: str


class FileLinks(BaseModel):
    self: str
    content: str


class FileOut(BaseModel):
    id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    etag: str
    created_at: datetime
    updated_at: datetime
    links: FileLinks


class FilePage(BaseModel):
    items: list[FileOut]
    next: str | None


class BatchOut(BaseModel):
    id: str
    created_at: datetime
    files: list[FileOut]


class FileUpload(BaseModel):
    """multipart/form-data: one or more parts named ``file`` with a filename."""

    file: bytes


class ContentHeaders(BaseModel):
    etag: str
    last_modified: str
    accept_ranges: str
    content_disposition: str


class Binary(RootModel[bytes]):
    """The file's bytes, as stored."""


class MetricsText(RootModel[str]):
    """Prometheus' text exposition format, version 0.0.4."""


class NoContent(BaseModel):
    """No body."""


class UploadLinks(BaseModel):
    self: str
    file: str | None = None


class ImportProgress(BaseModel):
    entries_done: int
    entries_total: int | None
    bytes_done: int


class ImportResult(BaseModel):
    batch: str


class ImportLinks(BaseModel):
    self: str


class ImportOut(BaseModel):
    """An archive import job (DESIGN section 5). ``result`` once it
    succeeded; ``problem`` (RFC 9457, naming the entry) once it failed."""

    id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    filename: str
    archive_format: str
    archive_size: int
    progress: ImportProgress
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: ImportResult | None
    problem: dict[str, Any] | None
    links: ImportLinks


class ImportPage(BaseModel):
    items: list[ImportOut]
    next: str | None


class RetryAfterHeader(BaseModel):
    retry_after: int | None = None


class AcceptedHeaders(BaseModel):
    location: str
    retry_after: int


class UploadOut(BaseModel):
    """A resumable upload; `links.file` appears once it is complete."""

    id: str
    offset: int
    length: int | None
    filename: str
    content_type: str
    created_at: datetime
    expires_at: datetime
    completed: bool
    links: UploadLinks


class TusHeaders(BaseModel):
    tus_resumable: Literal["1.0.0"] = Field(description="the tus protocol version")


class TusCreateHeaders(TusHeaders):
    upload_length: int | SkipJsonSchema[None] = Field(
        default=None, ge=0, description="bytes; or Upload-Defer-Length"
    )
    upload_defer_length: Literal[1] | SkipJsonSchema[None] = Field(
        default=None, description="1 to give the length later"
    )
    upload_metadata: str | SkipJsonSchema[None] = Field(
        default=None, description="key base64value pairs; filename, filetype"
    )
    idempotency_key: IdempotencyKey | SkipJsonSchema[None] = Field(
        default=None, description="a retry with the same key and payload replays the 201"
    )


class TusPatchHeaders(TusHeaders):
    upload_offset: int = Field(ge=0, description="bytes the upload holds, as HEAD reports")
    upload_checksum: str | SkipJsonSchema[None] = Field(
        default=None, description="algorithm and base64 digest of this PATCH's body"
    )
