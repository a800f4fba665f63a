"""Errors of job execution (codes are public, like :mod:`model.errors`).

They extend the one hierarchy rooted at :class:`model.errors.LlmctvError`. Each interface maps
codes in one place: HTTP in :mod:`service.problems`, job states in
:func:`workers.pipeline.fail_job`.
"""

from __future__ import annotations

from model.errors import LlmctvError


class JobNotFoundError(LlmctvError):
    """No job with this id (never created, or removed by retention)."""

    code = "job_not_found"


class ServiceUnavailableError(LlmctvError):
    """The job queue or its store cannot be reached."""

    code = "service_unavailable"


class JobTimeoutError(LlmctvError):
    """A job ran past its time limit (soft: stopped by the pipeline; hard: process stopped)."""

    code = "job_timeout"
