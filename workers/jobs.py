"""Contouring jobs: their record, their files, and where records are kept.

A job is one CT series plus clinical fields in, one RTSTRUCT out. Its files live in a storage
folder shared by the gateway and every worker (``<storage>/jobs/<job_id>/``); its record lives
in a :class:`JobStore`: JSON files next to the job's files (embedded mode, one process) or
Redis (several workers, :mod:`workers.redis_store`).

Records hold no patient name or ID: the clinical fields of the contract, UIDs and timings only.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

from workers.errors import JobNotFoundError
from workers.records import JsonRecordFiles
from workers.review import Review


class JobStatus(StrEnum):
    """Job states of the service contract."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the job will not change any more."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobError(BaseModel):
    """Why a job failed: a stable code and a human-readable detail."""

    code: str
    detail: str


#: Longest job id accepted (ours are 32 hex digits); longer ones are unknown, never a path.
MAX_ID_LENGTH = 64


def utcnow() -> datetime:
    """Timezone-aware now (UTC)."""
    return datetime.now(UTC)


def new_job_id() -> str:
    """A random, URL-safe job id (not derived from any patient data)."""
    return secrets.token_hex(16)


def is_valid_id(value: str) -> bool:
    """Whether ``value`` can be a job or order id: 1 to 64 lowercase hex digits."""
    return 0 < len(value) <= MAX_ID_LENGTH and all(c in "0123456789abcdef" for c in value)


class Job(BaseModel):
    """Everything known about one job (the contract's status fields and more)."""

    job_id: str
    status: JobStatus = JobStatus.QUEUED
    progress: float = 0.0
    warnings: list[str] = Field(default_factory=list)
    # Findings a reviewer must look at (held from automatic sending: hold_needs_attention).
    attention: list[str] = Field(default_factory=list)
    error: JobError | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    clinical: dict[str, Any] = Field(default_factory=dict)
    series_instance_uid: str | None = None
    source: str = "http"
    # The identity (its name) that submitted the job over HTTP, a counterfactual included;
    # None for jobs of the system (orders, DICOM). A submitter sees only its own jobs.
    submitted_by: str | None = None
    attempts: int = 0
    timings: dict[str, float] = Field(default_factory=dict)
    checkpoint: str | None = None
    # The registered model version that contoured it (``model <name> v<n> <hash>``); None for
    # a checkpoint outside the models folder (model.registry).
    model_version: str | None = None
    rtstruct_sop_instance_uid: str | None = None
    roi_volumes_cc: dict[str, float] = Field(default_factory=dict)
    structure_confidence: dict[str, float] = Field(default_factory=dict)  # by ROI name
    lease_until: datetime | None = None
    claimed_by: str | None = None  # the worker (``worker:<node>``) of the latest claim
    review: Review = Field(default_factory=Review)
    counterfactual_of: str | None = None
    superseded_by: str | None = None  # a later job of the same order (more instances)


def claimable(job: Job, now: datetime) -> bool:
    """Whether a worker may start ``job`` now: queued, or running with an expired lease.

    A running job whose lease has expired was left by a worker that died (its message is
    delivered again); a running job within its lease belongs to a live worker.
    """
    if job.status.finished:
        return False
    if job.status is JobStatus.RUNNING and job.lease_until is not None:
        return job.lease_until <= now
    return True


def claimed(job: Job, now: datetime, lease_s: float, holder: str = "") -> Job:
    """``job`` as started by worker ``holder`` now, holding it for ``lease_s`` seconds."""
    return job.model_copy(
        update={
            "status": JobStatus.RUNNING,
            "started_at": now,
            "attempts": job.attempts + 1,
            "lease_until": now + timedelta(seconds=lease_s),
            "claimed_by": holder or None,
        }
    )


class JobStore(Protocol):
    """Where job records are kept. Implementations must be safe across threads."""

    def create(self, job: Job) -> None:
        """Store a new record."""

    def get(self, job_id: str) -> Job:
        """The record, or :class:`~workers.errors.JobNotFoundError`."""

    def update(self, job_id: str, **changes: Any) -> Job:
        """Change fields of a record atomically and return the new record."""

    def claim(self, job_id: str, lease_s: float, holder: str = "") -> Job | None:
        """Atomically start the job (see :func:`claimable`) for worker ``holder``; ``None``
        when it is not ours."""

    def delete(self, job_id: str) -> None:
        """Forget a record (no error when it is already gone)."""

    def job_ids(self) -> list[str]:
        """Every stored job id."""


class JobFiles:
    """The storage layout of jobs: ``<root>/jobs/<job_id>/``.

    Parameters
    ----------
    root
        The storage folder (setting ``storage_dir``), shared by gateway and workers.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.jobs = self.root / "jobs"

    def folder(self, job_id: str) -> Path:
        """The job's folder (job ids are hex; anything else is refused)."""
        if not is_valid_id(job_id):
            raise JobNotFoundError(f"no job {job_id[:64]!r}")
        return self.jobs / job_id

    def input_dir(self, job_id: str) -> Path:
        """Where the CT files of a job are kept."""
        return self.folder(job_id) / "input"

    def rtstruct(self, job_id: str) -> Path:
        """The RTSTRUCT of a succeeded job."""
        return self.folder(job_id) / "rtstruct.dcm"

    def preview(self, job_id: str) -> Path:
        """The PNG preview of a succeeded job."""
        return self.folder(job_id) / "preview.png"

    def remove(self, job_id: str) -> None:
        """Delete a job's files."""
        shutil.rmtree(self.folder(job_id), ignore_errors=True)


class FileJobStore:
    """Job records as ``job.json`` in each job's folder (one process: the embedded mode)."""

    def __init__(self, files: JobFiles) -> None:
        self.files = files
        self._records = JsonRecordFiles(
            Job,
            lambda job_id: files.folder(job_id) / "job.json",
            lambda job_id: JobNotFoundError(f"no job {job_id}"),
        )

    def create(self, job: Job) -> None:
        """Store a new record."""
        self._records.write(job.job_id, job)

    def get(self, job_id: str) -> Job:
        """The record, or :class:`~workers.errors.JobNotFoundError`."""
        return self._records.read(job_id)

    def update(self, job_id: str, **changes: Any) -> Job:
        """Change fields of a record atomically and return the new record."""
        return self._records.update(job_id, **changes)

    def claim(self, job_id: str, lease_s: float, holder: str = "") -> Job | None:
        """Atomically start the job (see :func:`claimable`); ``None`` when it is not ours."""
        now = utcnow()
        return self._records.replace_if(
            job_id,
            lambda job: claimed(job, now, lease_s, holder) if claimable(job, now) else None,
        )

    def delete(self, job_id: str) -> None:
        """Forget a record."""
        self._records.delete(job_id)

    def job_ids(self) -> list[str]:
        """Every stored job id."""
        if not self.files.jobs.is_dir():
            return []
        return sorted(p.parent.name for p in self.files.jobs.glob("*/job.json"))


def iter_jobs(store: JobStore) -> Iterator[Job]:
    """Every job still readable in ``store``."""
    for job_id in store.job_ids():
        try:
            yield store.get(job_id)
        except JobNotFoundError:
            continue
