"""Errors of the gateway's faces (HTTP, uploads) (codes are public, like :mod:`model.errors`).

They extend the one hierarchy rooted at :class:`model.errors.LlmctvError`; the HTTP status
each code maps to is decided in :mod:`service.problems`, nowhere else.
"""

from __future__ import annotations

from model.errors import InputError, LlmctvError
from workers.errors import JobNotFoundError, JobTimeoutError, ServiceUnavailableError

__all__ = [
    "EmptyUploadError",
    "ForbiddenError",
    "JobAlreadyFinishedError",
    "JobFailedError",
    "JobNotFinishedError",
    "JobNotFoundError",
    "JobTimeoutError",
    "MalformedMultipartError",
    "ServiceUnavailableError",
    "StorageFullError",
    "TooManyAttemptsError",
    "UnauthorizedError",
    "UnsafeArchiveError",
    "UnsupportedMediaTypeError",
]


class UnauthorizedError(LlmctvError):
    """A request without a valid bearer token."""

    code = "unauthorized"


class TooManyAttemptsError(LlmctvError):
    """Too many failed authentications from this address or for this identity: locked out.

    Answered 429 with ``Retry-After: retry_after_s`` (:mod:`service.auth`); while locked, even
    the right token is refused.
    """

    code = "too_many_attempts"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class ForbiddenError(LlmctvError):
    """An authenticated caller whose role does not allow this request."""

    code = "forbidden"


class JobNotFinishedError(LlmctvError):
    """A job's result was requested before the job succeeded."""

    code = "job_not_finished"


class JobAlreadyFinishedError(LlmctvError):
    """A cancellation of a job that already finished (succeeded, failed or cancelled)."""

    code = "job_finished"


class JobFailedError(LlmctvError):
    """A job's result was requested but the job failed (its error is in the job status)."""

    code = "job_failed"


class StorageFullError(ServiceUnavailableError):
    """The storage folder is below its free-space watermark: new work is refused for now.

    Answered 503 with ``Retry-After: retry_after_s`` (:mod:`service.storage_guard`).
    """

    code = "storage_full"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class UnsupportedMediaTypeError(InputError):
    """A request body of a media type the endpoint does not take (STOW-RS: 415)."""

    code = "unsupported_media_type"


class MalformedMultipartError(InputError):
    """A multipart body whose framing is broken or truncated (STOW-RS: 400)."""

    code = "malformed_multipart"


class UnsafeArchiveError(InputError):
    """A zip archive with path traversal, links, or a decompression-bomb ratio."""

    code = "unsafe_archive"


class EmptyUploadError(InputError):
    """A request with neither ``files`` nor ``archive`` (or both)."""

    code = "no_input"
