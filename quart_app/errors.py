"""Domain errors, and the one table of them.

Each error class declares what it means to a client: ``code`` (the problem
type is ``urn:quart-app:problem:<code>``), ``status``, ``title``, and for
conditions that end by themselves or by an operator's hand, not by the client
changing its request, ``retry_after`` (seconds). These are plain ints and
strings: the HTTP edge (edge/problems.py) renders them as RFC 9457 problems,
and maps the errors Quart and Werkzeug raise themselves to the same classes,
so a condition has one problem shape whichever layer detects it.

Service and storage code raise these with a ``detail`` and, where the problem
carries more, ``members`` (``errors``, ``existing``). Only the edge and the
views set ``headers`` (Content-Range on a 416, Tus-Version on a 412).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple


class DomainError(Exception):
    """Base of the table; raise a subclass. Every subclass declares (or
    inherits) ``code``, ``status`` and ``title``; codes are unique."""

    code: ClassVar[str]
    status: ClassVar[int]
    title: ClassVar[str]
    retry_after: ClassVar[int | None] = None

    def __init__(
        self, detail: str, *, headers: Mapping[str, str] | None = None, **members: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.members = members
        # Response headers the problem must carry; set at the edge only.
        self.headers: dict[str, str] = dict(headers or {})


class ProblemType(NamedTuple):
    code: str
    status: int
    title: str
    retry_after: int | None


def error_classes() -> list[type[DomainError]]:
    """Every DomainError subclass, in definition order (subclasses of
    subclasses too)."""
    found: list[type[DomainError]] = []
    pending = list(DomainError.__subclasses__())
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending[0:0] = cls.__subclasses__()
    return found


def problem_types() -> list[ProblemType]:
    """Every problem type in the table, ordered by status then code (for the
    OpenAPI document, the README, runbook checks)."""
    types = {
        cls.code: ProblemType(cls.code, cls.status, cls.title, cls.retry_after)
        for cls in error_classes()
    }
    return sorted(types.values(), key=lambda t: (t.status, t.code))


# 400


class InvalidInput(DomainError):
    """Input failed validation; ``errors`` lists each field's problem."""

    code = "validation-failed"
    status = 400
    title = "The request is not valid"


class MalformedBody(DomainError):
    code = "malformed-body"
    status = 400
    title = "The request body could not be parsed"


class InvalidCursor(DomainError):
    code = "invalid-cursor"
    status = 400
    title = "The paging cursor is not valid"


class InvalidHost(DomainError):
    code = "invalid-host"
    status = 400
    title = "The Host header is not valid"


class HostNotAllowed(DomainError):
    code = "host-not-allowed"
    status = 400
    title = "This server does not answer for that host"


# 401-403


class Unauthorized(DomainError):
    """No usable API key: missing, malformed, unknown, expired or revoked.
    The edge adds ``WWW-Authenticate: Bearer`` (RFC 6750)."""

    code = "unauthorized"
    status = 401
    title = "An API key is needed"


class InsufficientScope(DomainError):
    """The key is valid but lacks the scope (``read``, ``write``, ``admin``)
    this request needs."""

    code = "insufficient-scope"
    status = 403
    title = "The API key does not allow this"


class LinkRefused(DomainError):
    """A signed download link that was tampered with, has expired or was revoked."""

    code = "link-refused"
    status = 403
    title = "The download link is not valid"


# 404-431


class NotFound(DomainError):
    """No resource at the URL: an unknown id, or no route at all."""

    code = "not-found"
    status = 404
    title = "Not found"


class MethodNotAllowed(DomainError):
    """The URL exists but not for this method; the edge adds ``Allow``."""

    code = "method-not-allowed"
    status = 405
    title = "Method not allowed"


class RequestTimeout(DomainError):
    """The request body stalled, arrived below the rate floor, or took
    longer than the whole-body deadline."""

    code = "request-timeout"
    status = 408
    title = "The request body did not arrive in time"


class EmailTaken(DomainError):
    code = "email-taken"
    status = 409
    title = "That email address is already taken"

    def __init__(self, detail: str, existing_id: int | None) -> None:
        super().__init__(detail)
        self.existing_id = existing_id


class OffsetMismatch(DomainError):
    code = "offset-mismatch"
    status = 409
    title = "Upload-Offset does not match the upload's offset"


class UploadLeaseLost(DomainError):
    """A PATCH held its upload's lease past its expiry and another request
    took the upload over: none of its bytes were committed."""

    code = "upload-lease-lost"
    status = 409
    title = "Another request took this upload over"


class Conflict(DomainError):
    code = "conflict"
    status = 409
    title = "Conflict"


class IdempotencyKeyBusy(DomainError):
    code = "idempotency-key-in-use"
    status = 409
    title = "A request with this Idempotency-Key is still running"


class Gone(DomainError):
    code = "gone"
    status = 410
    title = "The upload has expired"


class PreconditionFailed(DomainError):
    code = "precondition-failed"
    status = 412
    title = "A precondition failed"


class UnsupportedProtocolVersion(DomainError):
    """The tus version is missing or not ours; the view adds ``Tus-Version``."""

    code = "unsupported-protocol-version"
    status = 412
    title = "Unsupported tus version"


class TooLarge(DomainError):
    """A body or a file over its limit, whether declared in Content-Length
    or found while the body streams in."""

    code = "too-large"
    status = 413
    title = "Content too large"


class TooManyParts(DomainError):
    code = "too-many-parts"
    status = 413
    title = "Too many parts in the request"


class TargetTooLong(DomainError):
    code = "uri-too-long"
    status = 414
    title = "The request target is too long"


class UnsupportedMediaType(DomainError):
    code = "unsupported-media-type"
    status = 415
    title = "Unsupported media type"


class RangeNotSatisfiable(DomainError):
    """No part of the file was asked for; the view adds ``Content-Range``."""

    code = "range-not-satisfiable"
    status = 416
    title = "Range not satisfiable"


class IdempotencyKeyReused(DomainError):
    code = "idempotency-key-reused"
    status = 422
    title = "The Idempotency-Key was used for another request"


class ImportFailed(DomainError):
    """Not an HTTP answer: the ``problem`` of an import job that failed
    (GET /imports/{id}), naming the entry and the reason."""

    code = "import-failed"
    status = 422
    title = "The archive could not be imported"


class UploadLocked(DomainError):
    code = "upload-locked"
    status = 423
    title = "Another request is writing to this upload"


class TooManyFailedAuthentications(DomainError):
    """This client sent too many bad API keys lately; it waits before more
    are looked at."""

    code = "too-many-failed-authentications"
    status = 429
    title = "Too many failed authentications"
    retry_after = 60


class HeadersTooLarge(DomainError):
    code = "headers-too-large"
    status = 431
    title = "The request's header fields are too large"


class ChecksumMismatch(DomainError):
    code = "checksum-mismatch"
    status = 460
    title = "Checksum mismatch"


# 5xx: each ends by itself or by an operator's hand, so each says when to retry.


class BlobUnavailable(DomainError):
    """A file's row is committed but its bytes cannot be read."""

    code = "blob-unavailable"
    status = 503
    title = "The file's content is unavailable"
    retry_after = 5


class DatabaseUnavailable(DomainError):
    """The database cannot be used now (locked by another process, missing,
    read-only, unreachable); retrying later may succeed."""

    code = "database-unavailable"
    status = 503
    title = "The database is not available"
    retry_after = 5


class StorageUnavailable(DomainError):
    """The storage cannot take writes now (read-only, no permission, I/O
    error); retrying later may succeed."""

    code = "storage-unavailable"
    status = 503
    title = "The storage is not available"
    retry_after = 30


class ShuttingDown(DomainError):
    """The server is shutting down and ended this request's body (or its
    handler) before it could answer."""

    code = "shutting-down"
    status = 503
    title = "The server is shutting down"
    retry_after = 5


class TooManyConnections(DomainError):
    """The worker has as many connections as it takes (answered before the
    app sees a request)."""

    code = "too-many-connections"
    status = 503
    title = "Too many connections"
    retry_after = 1


class QuotaExceeded(DomainError):
    """The upload would take the account past its quota (bytes or files);
    the detail names the limit and what is left. Room comes back when files
    are deleted, uploads in flight end, or an admin raises the quota."""

    code = "quota-exceeded"
    status = 507
    title = "The account's quota is exceeded"
    retry_after = 60


class InsufficientStorage(DomainError):
    code = "insufficient-storage"
    status = 507
    title = "Insufficient storage"
    retry_after = 60
