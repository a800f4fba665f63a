"""One job from stored CT files to RTSTRUCT: the code every worker runs.

The embedded in-process worker and the Celery task both call :func:`run_job`; what differs is
only where the job record lives (a :class:`~workers.jobs.JobStore`). Errors become job states
here and nowhere else (:func:`fail_job`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from model import __version__
from model.dicom.rtstruct import ReferencedSeries, RoiSpec, WriterInfo, write_rtstruct
from model.dicom.series import CtSeries, read_ct_series
from model.errors import ContextNotCachedError, LlmctvError
from model.text.clinical import ClinicalRecord, parse_clinical
from workers.consistency import laterality_warnings, nodal_warnings, node_negative_record
from workers.errors import JobTimeoutError
from workers.jobs import JobError, JobFiles, JobStatus, JobStore, utcnow
from workers.preview import render_preview
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from workers.engine import ContourEngine

log = logging.getLogger(__name__)
PROGRESS_INTERVAL_S = 0.5


def _progress_writer(
    store: JobStore, job_id: str, start: float, share: float
) -> Callable[[float], None]:
    """A callback that records ``start + share * fraction`` at most every 0.5 s."""
    last = [0.0]

    def report(fraction: float) -> None:
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


def _contour(
    engine: ContourEngine,
    ct: CtSeries,
    record: ClinicalRecord,
    settings: WorkerSettings,
    progress: Callable[[float, float], Callable[[float], None]],
) -> tuple[npt.NDArray[np.bool_], dict[str, float], list[str], float | None]:
    """CTV for the record, and (for N+) the counterfactual N0 contour for the nodal check."""
    check = node_negative_record(record) if engine.multimodal else None
    check = check if settings.nodal_check_cc > 0 else None
    share = 0.5 if check is not None else 1.0
    result = engine.contour(ct.volume, record.prompt_text(), progress(0.0, share))
    timings = dict(result.timings)
    t0 = time.perf_counter()
    warnings = laterality_warnings(record, result.mask, ct.volume.array, ct.volume.grid)
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
    return result.mask, timings, warnings, nodal_cc


def run_job(
    job_id: str,
    store: JobStore,
    files: JobFiles,
    engine: ContourEngine,
    settings: WorkerSettings,
    timeouts: tuple[type[BaseException], ...] = (),
) -> None:
    """Run one job to a final state.

    Idempotent and safe against duplicate deliveries: the job is claimed atomically (queued,
    or running with an expired lease after its worker died), so a finished job, or one that a
    live worker holds, is left alone. ``timeouts`` are the exception types a soft time limit
    raises (Celery's); they end the job as ``job_timeout``.
    """
    job = store.claim(job_id, lease_s=settings.task_hard_time_limit)
    if job is None:
        log.info("job %s is finished or held by another worker; nothing to do", job_id)
        return
    try:
        _execute(job_id, job.clinical, job.series_instance_uid, store, files, engine, settings)
    except ContextNotCachedError:
        store.update(job_id, status=JobStatus.QUEUED, lease_until=None)
        raise
    except LlmctvError as exc:
        fail_job(store, job_id, exc)
    except timeouts:
        fail_job(store, job_id, JobTimeoutError("the job ran past the soft time limit"))
    except Exception as exc:  # the one boundary where an unexpected error becomes a job state
        log.exception("job %s failed unexpectedly", job_id)
        fail_job(store, job_id, exc)


def _execute(
    job_id: str,
    clinical: dict[str, Any],
    series_uid: str | None,
    store: JobStore,
    files: JobFiles,
    engine: ContourEngine,
    settings: WorkerSettings,
) -> None:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    record = parse_clinical(clinical)
    ct = read_ct_series(files.input_dir(job_id), series_instance_uid=series_uid)
    timings["ingest"] = time.perf_counter() - t0

    def progress(start: float, share: float) -> Callable[[float], None]:
        return _progress_writer(store, job_id, start, share)

    mask, contour_timings, warnings, nodal_cc = _contour(engine, ct, record, settings, progress)
    timings.update(contour_timings)
    t0 = time.perf_counter()
    roi = RoiSpec(settings.roi_name, mask, description="AI-generated CTV (llmctv)")
    written = write_rtstruct(
        files.rtstruct(job_id),
        ReferencedSeries.from_datasets(ct.datasets),
        [roi],
        writer_info(settings, engine.checkpoint_hash),
    )
    timings["rtstruct"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    files.preview(job_id).write_bytes(render_preview(ct.volume.array, mask, ct.volume.grid))
    timings["preview"] = time.perf_counter() - t0
    voxel_cc = float(np.prod(ct.volume.grid.spacing)) / 1000.0
    volumes = {settings.roi_name: round(float(mask.sum()) * voxel_cc, 2)}
    if nodal_cc is not None:
        volumes["nodal (N+ minus N0)"] = round(nodal_cc, 2)
    store.update(
        job_id,
        status=JobStatus.SUCCEEDED,
        progress=1.0,
        finished_at=utcnow(),
        warnings=store.get(job_id).warnings + warnings,
        timings={k: round(v, 4) for k, v in timings.items()},
        checkpoint=engine.checkpoint_hash,
        rtstruct_sop_instance_uid=str(written.SOPInstanceUID),
        roi_volumes_cc=volumes,
    )
    log.info("job %s succeeded in %.2f s", job_id, sum(timings.values()))


def fail_job(store: JobStore, job_id: str, exc: BaseException) -> None:
    """Record ``exc`` as the job's final error (the one place errors become job states)."""
    if isinstance(exc, LlmctvError):
        error = JobError(code=exc.code, detail=exc.detail)
    else:
        error = JobError(code="internal_error", detail="unexpected error; see the service log")
    store.update(job_id, status=JobStatus.FAILED, error=error, finished_at=utcnow())
    log.warning("job %s failed: [%s]", job_id, error.code)
