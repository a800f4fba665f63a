"""One job from stored CT files to RTSTRUCT: the code every worker runs.

The embedded in-process worker and the Celery task both call :func:`run_job`; what differs is
only where the job record lives (a :class:`~workers.jobs.JobStore`). What a job is, is
execution: a claim, a lease, cooperative stops, the job record. What it computes is one domain
call, :func:`model.contouring.structure_set.contour_structure_set`, with the engine injected.
Errors become job states here and nowhere else (:func:`fail_job`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from model.contouring.structure_set import (
    StructureSetFiles,
    StructureSetRequest,
    contour_structure_set,
)
from model.errors import ContextNotCachedError, LlmctvError
from workers.errors import (
    JobAttemptsExhaustedError,
    JobCancelledError,
    JobInterruptedError,
    JobSupersededError,
    JobTimeoutError,
    storage_error,
)
from workers.jobs import JobError, JobFiles, JobStatus, JobStore, utcnow
from workers.model_loading import contouring_policy, served_card
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from model.contouring.engine import ContourEngine

log = logging.getLogger(__name__)
PROGRESS_INTERVAL_S = 0.5
#: Seconds between two looks at the job record for a cancellation.
CANCEL_POLL_S = 0.25


class JobControl:
    """Cooperative stops of one running job, and the renewal of its lease.

    :meth:`check` runs at every sliding-window progress step and at every stage boundary, and
    raises :class:`JobCancelledError`, :class:`JobTimeoutError`, :class:`JobInterruptedError`
    or :class:`JobSupersededError`. A job that makes progress keeps its lease
    (``lease_s``, the setting ``job_stall_timeout``) renewed; a job stuck anywhere stops
    renewing it, and once it has expired the lease watchdog (:mod:`workers.lease_watchdog`)
    has the job claimed again. This worker, should it wake up, sees that its claim
    (``attempt``) is no longer the job's and stops without writing anything.
    """

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        time_limit_s: float,
        should_stop: Callable[[], bool] | None = None,
        *,
        attempt: int | None = None,
        lease_s: float | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.deadline = time.monotonic() + time_limit_s
        self.time_limit_s = time_limit_s
        self.should_stop = should_stop
        self.attempt = attempt
        self.lease_s = lease_s
        self._polled = 0.0
        self._renewed = time.monotonic()

    def check(self, *, force: bool = False) -> None:
        """Raise if the job must stop now; renew the lease when it is due.

        ``force`` reads the record now (before the final write), not at most every
        :data:`CANCEL_POLL_S`.
        """
        now = time.monotonic()
        if self.should_stop is not None and self.should_stop():
            raise JobInterruptedError("the worker is shutting down; the job is queued again")
        if now > self.deadline:
            raise JobTimeoutError(f"the job ran past its time limit of {self.time_limit_s:g} s")
        if force or now - self._polled >= CANCEL_POLL_S:
            self._polled = now
            job = self.store.get(self.job_id)
            if job.status is JobStatus.CANCELLED:
                raise JobCancelledError("the job was cancelled")
            if self.attempt is not None and (
                job.status is not JobStatus.RUNNING or job.attempts != self.attempt
            ):
                raise JobSupersededError(
                    f"attempt {self.attempt} no longer holds the job (it is now "
                    f"{job.status.value}, attempt {job.attempts})"
                )
            self._renew(now)

    def _renew(self, now: float) -> None:
        """Extend the lease by ``lease_s`` at most every quarter lease."""
        if self.lease_s is None or now - self._renewed < self.lease_s / 4:
            return
        self._renewed = now
        self.store.update(self.job_id, lease_until=utcnow() + timedelta(seconds=self.lease_s))


def progress_writer(
    store: JobStore, job_id: str, start: float, share: float, control: JobControl | None = None
) -> Callable[[float], None]:
    """A callback that records ``start + share * fraction`` at most every 0.5 s.

    With ``control`` it also stops the job (by raising) when it is cancelled or timed out.
    """
    last = [0.0]

    def report(fraction: float) -> None:
        if control is not None:
            control.check()
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL_S or fraction >= 1.0:
            last[0] = now
            store.update(job_id, progress=round(min(start + share * fraction, 0.99), 3))

    return report


def run_job(
    job_id: str,
    store: JobStore,
    files: JobFiles,
    engine: ContourEngine,
    settings: WorkerSettings,
    timeouts: tuple[type[BaseException], ...] = (),
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Run one job to a final state.

    Idempotent and safe against duplicate deliveries: the job is claimed atomically (queued,
    or running with an expired lease after its worker died), so a finished job, or one that a
    live worker holds, is left alone. ``timeouts`` are the exception types a soft time limit
    raises (Celery's); they end the job as ``job_timeout``, as does the cooperative limit
    ``task_soft_time_limit`` checked at every progress step (the embedded worker's only
    one). A job claimed more than ``job_max_attempts`` times (its worker died, or was
    killed at its hard limit, each time) fails as ``job_attempts_exhausted`` instead of
    running again (a dead letter). A cancelled job stops at its next progress step;
    ``should_stop`` returning true (a graceful shutdown) stops it there too and queues it
    again, and that does not count as an attempt.
    """
    job = store.claim(job_id, lease_s=settings.jobs.job_stall_timeout)
    if job is None:
        log.info("job %s is finished or held by another worker; nothing to do", job_id)
        return
    if job.attempts > settings.jobs.job_max_attempts:
        fail_job(
            store,
            job_id,
            JobAttemptsExhaustedError(
                f"the job was started {job.attempts - 1} times without finishing; it is not retried"
            ),
        )
        return
    control = JobControl(
        store,
        job_id,
        settings.jobs.task_soft_time_limit,
        should_stop,
        attempt=job.attempts,
        lease_s=settings.jobs.job_stall_timeout,
    )
    try:
        _execute(
            job_id, job.clinical, job.series_instance_uid, store, files, engine, settings, control
        )
    except ContextNotCachedError:
        store.update(job_id, status=JobStatus.QUEUED, lease_until=None)
        raise
    except JobCancelledError:
        store.update(job_id, lease_until=None, finished_at=utcnow())
        log.info("job %s stopped: cancelled", job_id)
    except JobSupersededError as exc:  # another claim owns the record now: write nothing
        log.warning("job %s: this worker stops: %s", job_id, exc.detail)
    except JobInterruptedError:  # handed back at a shutdown, not an attempt
        store.update(
            job_id,
            status=JobStatus.QUEUED,
            lease_until=None,
            progress=0.0,
            attempts=job.attempts - 1,
        )
        log.info("job %s interrupted by a shutdown; queued again", job_id)
    except LlmctvError as exc:
        _fail_own_claim(store, job_id, job.attempts, exc)
    except timeouts:
        error = JobTimeoutError("the job ran past the soft time limit")
        _fail_own_claim(store, job_id, job.attempts, error)
    except Exception as exc:  # the one boundary where an unexpected error becomes a job state
        log.exception("job %s failed unexpectedly", job_id)
        _fail_own_claim(store, job_id, job.attempts, exc)


def _fail_own_claim(store: JobStore, job_id: str, attempt: int, exc: BaseException) -> None:
    """Fail the job, unless another claim owns it now (this worker was stuck past its lease,
    and the job was handed on: its result, or its own failure, is the one that counts)."""
    current = store.get(job_id)
    if current.status is not JobStatus.RUNNING or current.attempts != attempt:
        log.warning(
            "job %s: attempt %d ended (%s) but no longer holds the job; nothing written",
            job_id,
            attempt,
            type(exc).__name__,
        )
        return
    fail_job(store, job_id, exc)


def _execute(
    job_id: str,
    clinical: dict[str, Any],
    series_uid: str | None,
    store: JobStore,
    files: JobFiles,
    engine: ContourEngine,
    settings: WorkerSettings,
    control: JobControl,
) -> None:
    """The job's one domain call, then its record: the only place a job succeeds.

    A registered model version (:func:`workers.model_loading.served_card`) names the ROIs as
    its card says and is recorded in the job, the RTSTRUCT and the ``job.finished`` entry.
    """
    card = served_card(engine)
    result = contour_structure_set(
        engine,
        StructureSetRequest(files.input_dir(job_id), clinical, series_uid),
        contouring_policy(settings, engine),
        StructureSetFiles(files.rtstruct(job_id), files.preview(job_id)),
        progress_writer(store, job_id, 0.0, 1.0, control),
    )
    control.check(force=True)
    store.update(
        job_id,
        status=JobStatus.SUCCEEDED,
        lease_until=None,
        progress=1.0,
        finished_at=utcnow(),
        warnings=store.get(job_id).warnings + result.warnings,
        attention=result.attention,
        structure_confidence=result.structure_confidence,
        timings=result.timings,
        checkpoint=result.checkpoint,
        model_version=card.label if card is not None else None,
        rtstruct_sop_instance_uid=result.rtstruct_sop_instance_uid,
        roi_volumes_cc=result.roi_volumes_cc,
    )
    log.info("job %s succeeded in %.2f s", job_id, sum(result.timings.values()))


def fail_job(store: JobStore, job_id: str, exc: BaseException) -> None:
    """Record ``exc`` as the job's final error (the one place errors become job states)."""
    if isinstance(exc, OSError) and (storage := storage_error(exc)) is not None:
        exc = storage
    if isinstance(exc, LlmctvError):
        error = JobError(code=exc.code, detail=exc.detail)
    else:
        error = JobError(code="internal_error", detail="unexpected error; see the service log")
    store.update(job_id, status=JobStatus.FAILED, error=error, finished_at=utcnow())
    log.warning("job %s failed: [%s]", job_id, error.code)
