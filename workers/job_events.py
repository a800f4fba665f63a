"""Job life events, derived from the job record's state changes: audit entries and metrics.

:class:`ObservedJobStore` wraps any :class:`~workers.jobs.JobStore`. It records

- ``job.submitted`` when a record is created (``who``: :data:`ACTOR`, the caller's identity
  name as the gateway's middleware set it, else the job's ``source``);
- ``job.started`` when a worker claims the job;
- ``job.finished`` / ``job.failed`` when the record reaches a final state, with the metrics
  ``jobs_finished`` (status, code), ``job_duration_seconds`` and, from the record's
  ``timings``, ``job_stage_duration_seconds`` per stage.

So the pipeline needs no audit or metrics code: whatever path ends a job (success,
:func:`~workers.pipeline.fail_job`, a time limit) goes through the store.
"""

from __future__ import annotations

import logging
import threading
from contextvars import ContextVar
from typing import Any

from workers.audit import AuditKind, AuditLog
from workers.counters import MetricsSink
from workers.errors import JobNotFoundError
from workers.jobs import Job, JobStatus, JobStore

log = logging.getLogger(__name__)
ACTOR: ContextVar[str | None] = ContextVar("llmctv_actor", default=None)
"""Who acts in the current request or task (an identity name); set by the gateway."""


class ObservedJobStore:
    """A :class:`~workers.jobs.JobStore` that audits and measures state changes.

    Parameters
    ----------
    inner
        The store that keeps the records.
    audit
        Where entries go.
    metrics
        Where counters and histograms go.
    worker
        ``who`` of started / finished entries (e.g. ``worker:<node>``).
    """

    def __init__(self, inner: JobStore, audit: AuditLog, metrics: MetricsSink, worker: str) -> None:
        self.inner = inner
        self.audit = audit
        self.metrics = metrics
        self.worker = worker
        self._pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def flush(self) -> None:
        """Store final states that the storage refused earlier, now that it may take them."""
        if not self._pending:
            return
        with self._lock:
            for job_id, changes in list(self._pending.items()):
                try:
                    self.inner.update(job_id, **changes)
                except OSError:
                    return
                except JobNotFoundError:
                    pass
                del self._pending[job_id]
                log.info("job %s: its final state is stored now", job_id)

    def _defer(self, job_id: str, changes: dict[str, Any], exc: OSError) -> Job:
        """Keep a refused final state: :meth:`get` shows it, :meth:`flush` stores it."""
        with self._lock:
            self._pending[job_id] = {**self._pending.get(job_id, {}), **changes}
        log.error("job %s: final state kept in memory, the storage refused it: %s", job_id, exc)
        return self.get(job_id)

    def create(self, job: Job) -> None:
        """Store a new record; audit the submission."""
        self.inner.create(job)
        who = ACTOR.get() or job.source
        self.metrics.incr("jobs_submitted", {"source": job.source})
        self.audit.record(
            AuditKind.JOB_SUBMITTED,
            who,
            job_id=job.job_id,
            source=job.source,
            series_instance_uid=job.series_instance_uid,
        )

    def get(self, job_id: str) -> Job:
        """The record (with a final state the storage has not taken yet)."""
        self.flush()
        job = self.inner.get(job_id)
        pending = self._pending.get(job_id)
        return job.model_copy(update=pending) if pending else job

    def update(self, job_id: str, **changes: Any) -> Job:
        """Change fields; a change to a final status is audited and measured.

        A final status that the storage refuses (read-only, full: ``OSError``) is kept in
        memory and stored as soon as the storage takes writes again; other refused changes
        raise.
        """
        status = changes.get("status")
        before = self.get(job_id).status if status is not None else None
        try:
            job = self.inner.update(job_id, **changes)
        except OSError as exc:
            if status is None or not JobStatus(status).finished:
                raise
            job = self._defer(job_id, changes, exc)
        if status is not None and job.status.finished and before is not job.status:
            self._finished(job)
        return job

    def claim(self, job_id: str, lease_s: float, holder: str = "") -> Job | None:
        """Start the job as this store's worker (``holder`` by default); audit the start."""
        job = self.inner.claim(job_id, lease_s, holder or self.worker)
        if job is not None:
            self.audit.record(
                AuditKind.JOB_STARTED, self.worker, job_id=job_id, attempt=job.attempts
            )
        return job

    def delete(self, job_id: str) -> None:
        """Forget a record."""
        self.inner.delete(job_id)

    def job_ids(self) -> list[str]:
        """Every stored job id."""
        return self.inner.job_ids()

    def _finished(self, job: Job) -> None:
        code = job.error.code if job.error is not None else ""
        end = job.finished_at or job.created_at
        duration = max((end - (job.started_at or job.created_at)).total_seconds(), 0.0)
        self.metrics.incr("jobs_finished", {"status": job.status.value, "code": code})
        self.metrics.observe("job_duration_seconds", {"status": job.status.value}, duration)
        if job.started_at is not None:
            wait = max((job.started_at - job.created_at).total_seconds(), 0.0)
            self.metrics.observe("job_queue_wait_seconds", {}, wait)
        for stage, seconds in job.timings.items():
            self.metrics.observe("job_stage_duration_seconds", {"stage": stage}, seconds)
        kinds = {
            JobStatus.SUCCEEDED: AuditKind.JOB_FINISHED,
            JobStatus.FAILED: AuditKind.JOB_FAILED,
        }
        kind = kinds.get(job.status, f"job.{job.status.value}")
        facts: dict[str, Any] = {"status": job.status.value, "duration_s": round(duration, 3)}
        if code:
            facts["code"] = code
        if job.checkpoint:
            facts["checkpoint"] = job.checkpoint
        if job.model_version:
            facts["model_version"] = job.model_version
        if job.attention:  # counts only: findings name structures, never a patient
            facts["needs_attention"] = len(job.attention)
            self.metrics.incr("jobs_needing_attention", {})
        if job.structure_confidence:
            facts["lowest_confidence"] = min(job.structure_confidence.values())
        # A person who ended the job (a cancel over HTTP) is its author, not the worker.
        who = ACTOR.get() or self.worker
        self.audit.record(kind, who, job_id=job.job_id, attempts=job.attempts, **facts)
