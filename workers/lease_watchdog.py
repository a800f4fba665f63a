"""The lease watchdog: running jobs that stopped making progress are seen and handed on.

A worker that claims a job holds it for a lease of ``job_stall_timeout`` seconds and renews
the lease while the job makes progress (:class:`workers.pipeline.JobControl`). A lease that
has expired while the job is still ``running`` means its worker is stuck (a deadlock, a hung
GPU or file system) or dead (kill -9, power loss). The gateway's dispatcher sweeps the
running jobs every refresh (:meth:`LeaseWatchdog.sweep`):

* each stalled job is counted (``llmctv_jobs_stalled`` now, ``jobs_requeued_total`` once per
  stall) and fails the readiness check ``jobs`` while it lasts;
* its task is sent to the worker queue again, once per claim: a live worker claims the job
  (a running job with an expired lease is claimable) and runs it as a new attempt; past
  ``job_max_attempts`` that claim fails it as ``job_attempts_exhausted``. The stuck worker,
  should it wake up, finds its claim gone and stops without writing.

Nothing is left ``running`` forever: if no other worker takes the job, the stuck worker's
Celery hard time limit ends it as ``job_timeout``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from workers.counters import MetricsSink
from workers.jobs import Job

log = logging.getLogger(__name__)


class RunningJobs(Protocol):
    """A job store that lists its running jobs (:class:`workers.redis_store.RedisJobStore`)."""

    def running_jobs(self) -> list[Job]:
        """The records of the running jobs."""


@dataclass(frozen=True)
class Stall:
    """A running job whose lease expired (no id of a patient: the job id is random)."""

    job_id: str
    attempt: int
    stalled_s: float


class LeaseWatchdog:
    """Finds stalled jobs and sends each once per claim to the worker queue again.

    Parameters
    ----------
    store
        The shared job store.
    resend
        Publishes the job's task on the worker queue.
    metrics
        ``jobs_requeued{reason="stalled"}`` is counted here.
    """

    def __init__(
        self, store: RunningJobs, resend: Callable[[str], None], metrics: MetricsSink
    ) -> None:
        self.store = store
        self.resend = resend
        self.metrics = metrics
        self._handed_on: set[tuple[str, int]] = set()

    def sweep(self, now: datetime) -> list[Stall]:
        """The stalled jobs now; those not yet handed on in this claim are sent again."""
        stalled = [
            Stall(job.job_id, job.attempts, (now - job.lease_until).total_seconds())
            for job in self.store.running_jobs()
            if job.lease_until is not None and job.lease_until <= now
        ]
        current = {(s.job_id, s.attempt) for s in stalled}
        for stall in stalled:
            if (stall.job_id, stall.attempt) in self._handed_on:
                continue
            log.warning(
                "job %s (attempt %d) made no progress within its lease; queued again",
                stall.job_id,
                stall.attempt,
            )
            self.resend(stall.job_id)
            self.metrics.incr("jobs_requeued", {"reason": "stalled"})
            self._handed_on.add((stall.job_id, stall.attempt))
        self._handed_on &= current
        return stalled
