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
    "JobFailedError",
    "JobNotFinishedError",
    "JobNotFoundError",
    "JobTimeoutError",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "UnsafeArchiveError",
]


class UnauthorizedError(LlmctvError):
    """A request without a valid bearer token."""

    code = "unauthorized"


class ForbiddenError(LlmctvError):
    """An authenticated caller whose role does not allow this request."""

    code = "forbidden"


class JobNotFinishedError(LlmctvError):
    """A job's result was requested before the job succeeded."""

    code = "job_not_finished"


class JobFailedError(LlmctvError):
    """A job's result was requested but the job failed (its error is in the job status)."""

    code = "job_failed"


class UnsafeArchiveError(InputError):
    """A zip archive with path traversal, links, or a decompression-bomb ratio."""

    code = "unsafe_archive"


class EmptyUploadError(InputError):
    """A request with neither ``files`` nor ``archive`` (or both)."""

    code = "no_input"
