"""The HTTP endpoints of the service contract (``../shared/specs/service-contract.md``).

A job belongs to the identity that submitted it (``submitted_by``). Submitters list, read,
cancel and download their own jobs only; another submitter's job answers 404
``job_not_found`` exactly like an unknown one. Reviewers and admins reach every job
(:func:`service.auth.visible_job`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from model import __version__
from model.dicom.rtstruct.approval import rejected_bytes
from model.dicom.series import inspect_ct_series
from model.errors import LlmctvError
from model.text.clinical import ClinicalRecord, parse_clinical
from service.auth import Identity, Role, may_see, visible_job
from service.deps import Authorized, ServiceState, StateDep
from service.errors import (
    EmptyUploadError,
    JobAlreadyFinishedError,
    JobFailedError,
    JobNotFinishedError,
)
from service.intake import IntakeReport, UploadLimits, extract_archive, store_files
from service.problems import PROBLEM_JSON
from service.settings import UploadSettings
from workers.jobs import Job, JobError, JobStatus, iter_jobs, new_job_id, utcnow
from workers.pipeline import fail_job
from workers.review import Review, ReviewStatus, StructureSetRejectedError

log = logging.getLogger(__name__)
router = APIRouter()


class ContourAccepted(BaseModel):
    """Answer to ``POST /contour``."""

    job_id: str
    status_url: str
    rtstruct_url: str
    preview_url: str


class JobView(BaseModel):
    """``GET /jobs/{job_id}``: the contract's fields first, then more detail."""

    job_id: str
    status: JobStatus
    progress: float = Field(ge=0.0, le=1.0, description="fraction of sliding windows done")
    warnings: list[str]
    error: JobError | None
    created_at: datetime
    attention: list[str] = Field(
        default_factory=list,
        description="needs-attention findings: check these first; the RTSTRUCT is held from "
        "automatic sending until a reviewer approves it (setting hold_needs_attention)",
    )
    finished_at: datetime | None
    started_at: datetime | None = None
    series_instance_uid: str | None = None
    attempts: int = 0
    checkpoint: str | None = None
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per stage")
    roi_volumes_cc: dict[str, float] = Field(default_factory=dict)
    structure_confidence: dict[str, float] = Field(
        default_factory=dict,
        description="per ROI: the network's mean class probability over the structure "
        "(a ranking; below confidence_flag_below it needs attention)",
    )
    rtstruct_sop_instance_uid: str | None = None
    review: Review = Field(default_factory=Review, description="pending, approved or rejected")
    counterfactual_of: str | None = None
    superseded_by: str | None = Field(
        default=None, description="the job that re-ran this order on the complete series"
    )
    submitted_by: str | None = Field(
        default=None,
        description="the identity that submitted the job over HTTP; null for orders and "
        "DICOM (the system)",
    )
    model_version: str | None = Field(
        default=None,
        description="registered model version that contoured the job (model <name> v<n> <hash>)",
    )

    @classmethod
    def of(cls, job: Job) -> JobView:
        """The public view of a job record."""
        return cls.model_validate(job.model_dump(), from_attributes=False)


class JobList(BaseModel):
    """``GET /jobs``: the jobs the caller may see, newest first."""

    jobs: list[JobView]


class Health(BaseModel):
    """``GET /health``."""

    status: str
    version: str
    dispatcher: dict[str, Any]


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries: problem+json for each status."""
    return {
        s: {"description": "problem+json with a stable `code`", "content": {PROBLEM_JSON: {}}}
        for s in statuses
    }


def _limits(uploads: UploadSettings) -> UploadLimits:
    return UploadLimits(
        uploads.max_upload_bytes,
        uploads.max_archive_members,
        uploads.max_unpacked_bytes,
        uploads.max_compression_ratio,
    )


def _intake(
    files: list[UploadFile] | None,
    archive: UploadFile | None,
    folder: Path,
    uploads: UploadSettings,
) -> IntakeReport:
    if bool(files) == (archive is not None):
        raise EmptyUploadError("send either 'files' (DICOM files) or 'archive' (one zip)")
    if archive is not None:
        return extract_archive(archive.file, folder, _limits(uploads))
    return store_files((f.file for f in files or []), folder, _limits(uploads))


def submit_or_fail(state: ServiceState, job_id: str) -> None:
    """Hand a stored job to the dispatcher; if that fails, the job fails too (never stranded)."""
    try:
        state.dispatcher.submit(job_id)
    except LlmctvError as exc:
        fail_job(state.store, job_id, exc)
        raise


@router.post(
    "/contour",
    status_code=202,
    response_model=ContourAccepted,
    summary="Contour the CTV of one CT series for the given clinical fields",
    responses=problem_responses(401, 413, 422),
)
def submit_contour(
    state: StateDep,
    who: Authorized,
    clinical: Annotated[str, Form(description="clinical fields (JSON text, service contract)")],
    files: Annotated[
        list[UploadFile] | None, File(description="DICOM files of one CT series")
    ] = None,
    archive: Annotated[UploadFile | None, File(description="one zip of DICOM files")] = None,
    series_instance_uid: Annotated[
        str | None, Form(description="the series to contour where several arrive")
    ] = None,
) -> ContourAccepted:
    """Store the series, check it (headers only), and queue the job."""
    record: ClinicalRecord = parse_clinical(clinical)
    job_id = new_job_id()
    folder = state.files.input_dir(job_id)
    try:
        report = _intake(files, archive, folder, state.settings.uploads)
        summary = inspect_ct_series(
            folder,
            series_instance_uid=series_instance_uid,
            policy=state.settings.contouring.ingest_policy(),
        )
    except BaseException:
        state.files.remove(job_id)
        raise
    warnings = list(report.warnings)
    if summary.skipped_files and not report.warnings:
        warnings.append(f"skipped {summary.skipped_files} non-DICOM file(s)")
    job = Job(
        job_id=job_id,
        clinical=record.model_dump(mode="json"),
        series_instance_uid=summary.series_instance_uid,
        warnings=warnings,
        submitted_by=who.name,
    )
    try:
        state.store.create(job)
    except BaseException:  # no record (e.g. Redis down): nothing may stay on disk either
        state.files.remove(job_id)
        raise
    submit_or_fail(state, job_id)
    log.info("job %s queued: %d slices of %dx%d", job_id, *summary.shape)
    base = f"/jobs/{job_id}"
    return ContourAccepted(
        job_id=job_id,
        status_url=base,
        rtstruct_url=f"{base}/rtstruct",
        preview_url=f"{base}/preview.png",
    )


@router.get(
    "/jobs",
    response_model=JobList,
    summary="The caller's jobs (a submitter's own; every job for reviewers and admins)",
    responses=problem_responses(401, 422),
)
def list_jobs(
    state: StateDep,
    who: Authorized,
    status: Annotated[JobStatus | None, Query(description="only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many")] = 100,
) -> JobList:
    """Jobs the caller may see, newest first."""
    jobs = [
        job
        for job in iter_jobs(state.store)
        if may_see(who, job) and (status is None or job.status is status)
    ]
    jobs.sort(key=lambda job: job.created_at, reverse=True)
    return JobList(jobs=[JobView.of(job) for job in jobs[:limit]])


@router.get(
    "/jobs/{job_id}",
    response_model=JobView,
    summary="Job status",
    responses=problem_responses(401, 404),
)
def job_status(job_id: str, state: StateDep, who: Authorized) -> JobView:
    """Status, progress, warnings and error of a job (another submitter's job is 404)."""
    return JobView.of(visible_job(state.store, job_id, who))


@router.delete(
    "/jobs/{job_id}",
    response_model=JobView,
    summary="Cancel a queued or running job",
    responses=problem_responses(401, 404, 409),
)
def cancel_job(job_id: str, state: StateDep, who: Authorized) -> JobView:
    """End a queued or running job as ``cancelled``.

    A queued job never starts; a running one stops at its next sliding-window step or stage
    boundary (within seconds). A finished job gives 409 ``job_finished``; another
    submitter's job 404. The audit trail names the caller (``job.cancelled``, ``who``).
    """
    job = visible_job(state.store, job_id, who)
    if job.status.finished:
        raise JobAlreadyFinishedError(f"job {job_id} is {job.status.value}; nothing to cancel")
    job = state.store.update(
        job_id,
        status=JobStatus.CANCELLED,
        finished_at=utcnow(),
        error=JobError(code="job_cancelled", detail=f"the job was cancelled by {who.name}"),
    )
    log.info("job %s cancelled by %s", job_id, who.name)
    return JobView.of(job)


def _finished(state: ServiceState, job_id: str, who: Identity) -> Job:
    job = visible_job(state.store, job_id, who)
    if job.status is JobStatus.CANCELLED:
        raise JobFailedError(f"job {job_id} was cancelled; it has no result")
    if job.status is JobStatus.FAILED:
        code = job.error.code if job.error else "unknown"
        raise JobFailedError(f"job {job_id} failed [{code}]; it has no result")
    if job.status is not JobStatus.SUCCEEDED:
        raise JobNotFinishedError(f"job {job_id} is {job.status.value}; try again later")
    return job


@router.get(
    "/jobs/{job_id}/rtstruct",
    response_class=FileResponse,
    summary="The RTSTRUCT of a succeeded job",
    responses={
        200: {"content": {"application/dicom": {}}, "description": "RT Structure Set"},
        **problem_responses(401, 404, 409),
    },
)
def job_rtstruct(job_id: str, state: StateDep, who: Authorized) -> Response:
    """The RT Structure Set (Part 10 file), once the job has succeeded.

    The review gate travels with the file: header ``X-LLMCTV-Review`` (pending, approved,
    rejected) and ApprovalStatus in the file (UNAPPROVED until approved). A rejected structure
    set is refused (409 ``structure_set_rejected``) to all but reviewers, who get it marked
    REJECTED.
    """
    job = _finished(state, job_id, who)
    review = job.review.status
    headers = {"X-LLMCTV-Review": review.value}
    name = f"RS.{job_id}.dcm"
    if review is ReviewStatus.REJECTED:
        if not who.may(Role.REVIEWER):
            raise StructureSetRejectedError(
                f"job {job_id}: its structure set was rejected in review and must not be used"
            )
        marked = rejected_bytes(state.files.rtstruct(job_id), job.review.by or who.name, utcnow())
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return Response(marked, media_type="application/dicom", headers=headers)
    return FileResponse(
        state.files.rtstruct(job_id), media_type="application/dicom", filename=name, headers=headers
    )


@router.get(
    "/jobs/{job_id}/preview.png",
    response_class=FileResponse,
    summary="CTV over CT in axial, coronal and sagittal views",
    responses={
        200: {"content": {"image/png": {}}, "description": "preview"},
        **problem_responses(401, 404, 409),
    },
)
def job_preview(job_id: str, state: StateDep, who: Authorized) -> FileResponse:
    """A PNG for a quick visual check of a succeeded job."""
    _finished(state, job_id, who)
    return FileResponse(state.files.preview(job_id), media_type="image/png")


@router.get("/health", response_model=Health, summary="Liveness (no authentication)")
async def health(state: StateDep) -> Health:
    """Answers while the process is alive; names the dispatcher mode."""
    return Health(status="ok", version=__version__, dispatcher=state.dispatcher.describe())
