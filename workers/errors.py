"""Errors of job execution (codes are public, like :mod:`model.errors`).

They extend the one hierarchy rooted at :class:`model.errors.LlmctvError`. Each interface maps
codes in one place: HTTP in :mod:`service.problems`, job states in
:func:`workers.pipeline.fail_job`.
"""

from __future__ import annotations

import errno
import os

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


class JobCancelledError(LlmctvError):
    """A job was cancelled (``DELETE /jobs/{id}``); a running one stops at its next step."""

    code = "job_cancelled"


class JobInterruptedError(LlmctvError):
    """The worker is shutting down; the running job is queued again, not failed."""

    code = "job_interrupted"


class JobSupersededError(LlmctvError):
    """This worker lost its claim on the job: its lease expired (no progress) and the job was
    claimed again, or it was ended meanwhile. The worker stops and writes nothing more."""

    code = "job_superseded"


class JobAttemptsExhaustedError(LlmctvError):
    """A job was started ``job_max_attempts`` times without finishing (crash, restart, kill):
    it is failed instead of being delivered again (a dead letter)."""

    code = "job_attempts_exhausted"


class StorageUnavailableError(LlmctvError):
    """The storage folder refused a write: read-only, full, or gone (an ``OSError`` of
    :data:`STORAGE_ERRNOS`)."""

    code = "storage_unavailable"


STORAGE_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EIO})
"""``OSError`` numbers that mean the storage, not the job, is at fault."""


def storage_error(exc: OSError) -> StorageUnavailableError | None:
    """The storage error ``exc`` stands for, or ``None`` for any other ``OSError``."""
    if exc.errno not in STORAGE_ERRNOS:
        return None
    reason = os.strerror(exc.errno) if exc.errno is not None else str(exc)
    return StorageUnavailableError(f"the storage folder refused a write: {reason}")
