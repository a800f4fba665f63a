"""One job from stored CT files to RTSTRUCT: the code every worker runs.

The embedded in-process worker and the Celery task both call :func:`run_job`; what differs is
only where the job record lives (a :class:`~workers.jobs.JobStore`). Errors become job states
here and nowhere else (:func:`fail_job`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from model import __version__
from model.dicom.ingest_policy import IngestPolicy
from model.dicom.rtstruct import ReferencedSeries, WriterInfo, write_rtstruct
from model.dicom.series import CtSeries, read_ct_series
from model.errors import ContextNotCachedError, ImplausibleGeometryError, LlmctvError
from model.text.clinical import ClinicalRecord, parse_clinical
from workers.consistency import laterality_warnings, nodal_warnings, node_negative_record
from workers.errors import (
    JobAttemptsExhaustedError,
    JobCancelledError,
    JobInterruptedError,
    JobSupersededError,
    JobTimeoutError,
    storage_error,
)
from workers.jobs import JobError, JobFiles, JobStatus, JobStore, utcnow
from workers.preview import render_preview
from workers.settings import WorkerSettings
from workers.structure_set import (
    attention_findings,
    confidence_by_roi,
    naming_map,
    removal_warnings,
    roi_specs,
    structure_warnings,
    volumes_cc,
)

if TYPE_CHECKING:
    from workers.engine import ContourEngine, EngineResult

log = logging.getLogger(__name__)
PROGRESS_INTERVAL_S = 0.5
#: Seconds between two looks at the job record for a cancellation.
CANCEL_POLL_S = 0.25


def ingest_policy(settings: WorkerSettings) -> IngestPolicy:
    """The ingest policy with the plausibility limits of the settings (gateway and worker)."""
    return IngestPolicy(
        min_spacing_mm=settings.ingest_min_spacing_mm,
        max_spacing_mm=settings.ingest_max_spacing_mm,
        max_extent_mm=settings.ingest_max_extent_mm,
        max_matrix=settings.ingest_max_matrix,
        max_windows=settings.ingest_max_windows,
        refuse_untrained_positions=settings.ingest_refuse_untrained_positions,
    )


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


def _progress_writer(
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


def writer_info(settings: WorkerSettings, checkpoint_hash: str) -> WriterInfo:
    """Manufacturer, model and labels of our RTSTRUCTs (ROI suffix from the settings)."""
    return WriterInfo(
        model_name="llmctv multimodal CTV",
        software_versions=(f"llmctv {__version__}", f"checkpoint {checkpoint_hash or 'unknown'}"),
        structure_set_label=settings.structure_set_label,
        roi_name_suffix=settings.roi_name_suffix,
    )


@dataclass
class Contoured:
    """One job's contouring: the engine's result and what the checks found."""

    result: EngineResult
    timings: dict[str, float]
    warnings: list[str]
    attention: list[str]
    nodal_cc: float | None


def _contour(
    engine: ContourEngine,
    ct: CtSeries,
    record: ClinicalRecord,
    settings: WorkerSettings,
    progress: Callable[[float, float], Callable[[float], None]],
) -> Contoured:
    """CTV for the record, its consistency warnings and its needs-attention findings.

    A network with separate structures is checked on them directly (nodal CTV present for N+,
    absent for N0/N1mi; breast or chest wall as the surgery says). A single-CTV network needs
    the counterfactual N0 contour for the nodal check (a second pass, N+ only).
    """
    check = node_negative_record(record) if engine.multimodal else None
    needs_second_pass = settings.nodal_check_cc > 0 and not engine.has_structures
    check = check if needs_second_pass else None
    share = 0.5 if check is not None else 1.0
    result = engine.contour_record(ct.volume, record, progress(0.0, share))
    timings = dict(result.timings)
    t0 = time.perf_counter()
    warnings = laterality_warnings(record, result.mask, ct.volume.array, ct.volume.grid)
    voxel_cc = float(np.prod(ct.volume.grid.spacing)) / 1000.0
    attention: list[str] = []
    if engine.has_structures:
        min_cc = settings.nodal_check_cc if settings.nodal_check_cc > 0 else 1.0
        warnings += structure_warnings(record, result.structures, voxel_cc, min_cc)
        attention = attention_findings(
            record,
            result.structures,
            result.plausibility,
            voxel_cc,
            min_cc,
            confidence=result.confidence,
            flag_below=settings.confidence_flag_below,
        )
    warnings += removal_warnings(result.removed_cc, settings.removed_warning_cc)
    timings["consistency"] = time.perf_counter() - t0
    nodal_cc = None
    if check is not None:
        t0 = time.perf_counter()
        n0 = engine.contour(ct.volume, check.prompt_text(), progress(0.5, 0.5))
        found, nodal_cc = nodal_warnings(
            record, result.mask, n0.mask, ct.volume.grid, settings.nodal_check_cc
        )
        warnings += found
        timings["nodal_check"] = time.perf_counter() - t0
    return Contoured(result, timings, warnings, attention, nodal_cc)


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
    job = store.claim(job_id, lease_s=settings.job_stall_timeout)
    if job is None:
        log.info("job %s is finished or held by another worker; nothing to do", job_id)
        return
    if job.attempts > settings.job_max_attempts:
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
        settings.task_soft_time_limit,
        should_stop,
        attempt=job.attempts,
        lease_s=settings.job_stall_timeout,
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
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    record = parse_clinical(clinical)
    policy = ingest_policy(settings)
    ct = read_ct_series(files.input_dir(job_id), series_instance_uid=series_uid, policy=policy)
    timings["ingest"] = time.perf_counter() - t0
    _check_windows(engine, ct, policy)
    control.check()

    def progress(start: float, share: float) -> Callable[[float], None]:
        return _progress_writer(store, job_id, start, share, control)

    contoured = _contour(engine, ct, record, settings, progress)
    result, nodal_cc = contoured.result, contoured.nodal_cc
    warnings = [*ct.warnings, *contoured.warnings]
    mask = result.mask
    timings.update(contoured.timings)
    control.check()
    t0 = time.perf_counter()
    rois = roi_specs(mask, result.structures, settings.roi_name, naming_map(settings.roi_names))
    written = write_rtstruct(
        files.rtstruct(job_id),
        ReferencedSeries.from_datasets(ct.datasets),
        rois,
        writer_info(settings, engine.checkpoint_hash),
    )
    timings["rtstruct"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    outlines = {roi.name: roi.mask for roi in rois[1:]} or None  # sub-volumes, not the union
    preview = render_preview(ct.volume.array, mask, ct.volume.grid, structures=outlines)
    files.preview(job_id).write_bytes(preview)
    timings["preview"] = time.perf_counter() - t0
    voxel_cc = float(np.prod(ct.volume.grid.spacing)) / 1000.0
    volumes = volumes_cc(rois, voxel_cc)
    if nodal_cc is not None:
        volumes["nodal (N+ minus N0)"] = round(nodal_cc, 2)
    control.check(force=True)
    store.update(
        job_id,
        status=JobStatus.SUCCEEDED,
        lease_until=None,
        progress=1.0,
        finished_at=utcnow(),
        warnings=store.get(job_id).warnings + warnings,
        attention=contoured.attention,
        structure_confidence=confidence_by_roi(result.confidence, naming_map(settings.roi_names)),
        timings={k: round(v, 4) for k, v in timings.items()},
        checkpoint=engine.checkpoint_hash,
        rtstruct_sop_instance_uid=str(written.SOPInstanceUID),
        roi_volumes_cc=volumes,
    )
    log.info("job %s succeeded in %.2f s", job_id, sum(timings.values()))


def _check_windows(engine: ContourEngine, ct: CtSeries, policy: IngestPolicy) -> None:
    """Refuse a CT whose network pass would take more than ``policy.max_windows`` windows."""
    windows = engine.window_count(ct.volume.grid)
    if windows > policy.max_windows:
        raise ImplausibleGeometryError(
            f"the series needs {windows} sliding windows per pass; at most "
            f"{policy.max_windows} are accepted"
        )


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
