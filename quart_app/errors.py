"""Domain errors raised by service and storage code. They know nothing about
HTTP: problems.py maps each ``code`` to a status and title at the edge."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    code = "domain-error"

    def __init__(self, detail: str, **members: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.members = members


class InvalidInput(DomainError):
    """Input failed validation; ``errors`` lists each field's problem."""

    code = "validation-failed"


class MalformedBody(DomainError):
    code = "malformed-body"


class UnsupportedMediaType(DomainError):
    code = "unsupported-media-type"


class NotFound(DomainError):
    code = "not-found"


class EmailTaken(DomainError):
    code = "email-taken"

    def __init__(self, detail: str, existing_id: int | None) -> None:
        super().__init__(detail)
        self.existing_id = existing_id


class InvalidCursor(DomainError):
    code = "invalid-cursor"


class PreconditionFailed(DomainError):
    code = "precondition-failed"


class TooLarge(DomainError):
    code = "too-large"


class TooManyParts(DomainError):
    code = "too-many-parts"


class TargetTooLong(DomainError):
    code = "uri-too-long"


class HeadersTooLarge(DomainError):
    code = "headers-too-large"


class InsufficientStorage(DomainError):
    code = "insufficient-storage"


class OffsetMismatch(DomainError):
    code = "offset-mismatch"


class UploadLocked(DomainError):
    code = "upload-locked"


class Gone(DomainError):
    code = "gone"


class ChecksumMismatch(DomainError):
    code = "checksum-mismatch"


class UnsupportedProtocolVersion(DomainError):
    code = "unsupported-protocol-version"


class Conflict(DomainError):
    code = "conflict"


class IdempotencyKeyReused(DomainError):
    code = "idempotency-key-reused"


class IdempotencyKeyBusy(DomainError):
    code = "idempotency-key-in-use"


class InvalidHost(DomainError):
    code = "invalid-host"


class HostNotAllowed(DomainError):
    code = "host-not-allowed"


class BlobUnavailable(DomainError):
    """A file's row is committed but its bytes cannot be read."""

    code = "blob-unavailable"


class DatabaseUnavailable(DomainError):
    """The database cannot be used now (locked by another process, missing,
    read-only, unreachable); retrying later may succeed."""

    code = "database-unavailable"


class StorageUnavailable(DomainError):
    """The storage cannot take writes now (read-only, no permission, I/O
    error); retrying later may succeed."""

    code = "storage-unavailable"
