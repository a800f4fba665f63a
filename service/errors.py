"""Errors of the gateway and the job machinery (codes are public, like :mod:`model.errors`).

They extend the one hierarchy rooted at :class:`model.errors.LlmctvError`; the HTTP status
each code maps to is decided in :mod:`service.problems`, nowhere else.
"""

from __future__ import annotations

from model.errors import InputError, LlmctvError


class UnauthorizedError(LlmctvError):
    """A request without a valid bearer token."""

    code = "unauthorized"


class JobNotFoundError(LlmctvError):
    """No job with this id (never created, or removed by retention)."""

    code = "job_not_found"


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


class ServiceUnavailableError(LlmctvError):
    """The job queue or its store cannot be reached."""

    code = "service_unavailable"


class JobTimeoutError(LlmctvError):
    """A job ran past its time limit (soft: stopped by the pipeline; hard: process stopped)."""

    code = "job_timeout"
