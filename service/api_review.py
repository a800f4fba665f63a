"""Review decisions and counterfactual jobs: ``POST /jobs/{id}/review``, ``/counterfactual``.

A reviewer approves or rejects a succeeded job once. Approval writes the approved RTSTRUCT
(a new SOP Instance, :mod:`model.dicom.rtstruct.approval`) in place of the unapproved one, which
is kept next to it; with ``require_review`` the order desk sends an order's RTSTRUCT only then.

A counterfactual job contours the same stored CT (hard links to the job's input files) under
a note with one clinical field changed (N stage, side or surgery), so a reviewer sees how the
text moves the target. The review pages (:mod:`service.ui`) call the same functions.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from model.dicom.rtstruct.approval import Approval, write_approved_copy
from model.errors import InputError
from model.text.clinical import parse_clinical
from service.api import (
    ContourAccepted,
    JobView,
    problem_responses,
    submit_or_fail,
)
from service.auth import Identity, visible_job
from service.deps import AuditDep, Authorized, DeskDep, Reviewer, ServiceState, StateDep
from service.errors import JobNotFinishedError
from workers.audit import AuditKind, AuditLog
from workers.jobs import Job, JobStatus, new_job_id, utcnow
from workers.review import AlreadyReviewedError, Review, ReviewStatus

log = logging.getLogger(__name__)
router = APIRouter()
_decisions = threading.Lock()  # one gateway decides reviews: no two decisions on one job
COUNTERFACTUAL_FIELDS = ("n_stage", "side", "surgery")
UNAPPROVED_FILE = "rtstruct.unapproved.dcm"


class InvalidReviewError(InputError):
    """A review decision that is not approved/rejected, or a rejection without a reason."""

    code = "invalid_review"


class InvalidCounterfactualError(InputError):
    """A counterfactual that names no changeable field, or changes nothing."""

    code = "invalid_counterfactual"


class ReviewRequest(BaseModel):
    """``POST /jobs/{job_id}/review``."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approved", "rejected"]
    reason: str | None = Field(default=None, max_length=1000)


class CounterfactualRequest(BaseModel):
    """``POST /jobs/{job_id}/counterfactual``: one clinical field of one side, changed."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(max_length=32, description="n_stage, side or surgery")
    value: str = Field(max_length=64)
    side: str | None = Field(
        default=None, max_length=16, description="the diagnosis to change (default: the first)"
    )


def record_decision(audit: AuditLog | None, job: Job, identity: Identity) -> None:
    """The one place a review decision is written to the audit trail (no patient data)."""
    log.info("review of job %s: %s by %s", job.job_id, job.review.status.value, identity.name)
    if audit is not None:
        audit.record(
            AuditKind.REVIEW_DECISION,
            identity.name,
            job_id=job.job_id,
            decision=job.review.status.value,
            rtstruct_sop_instance_uid=job.rtstruct_sop_instance_uid,
        )


def decide(
    state: ServiceState,
    job_id: str,
    request: ReviewRequest,
    identity: Identity,
    audit: AuditLog | None = None,
) -> Job:
    """Record ``identity``'s decision on a succeeded job (approval writes the approved file).

    Raises
    ------
    JobNotFoundError
        No such job.
    JobNotFinishedError
        The job has not succeeded (queued, running, failed or cancelled).
    AlreadyReviewedError
        The job was already approved or rejected.
    InvalidReviewError
        A rejection without a reason.
    """
    reason = (request.reason or "").strip() or None
    if request.decision == "rejected" and reason is None:
        raise InvalidReviewError("reason: a rejection needs a reason")
    with _decisions:
        job = state.store.get(job_id)
        if job.status is not JobStatus.SUCCEEDED:
            raise JobNotFinishedError(
                f"job {job_id} is {job.status.value}; only a succeeded job can be reviewed"
            )
        if job.review.status is not ReviewStatus.PENDING:
            raise AlreadyReviewedError(f"job {job_id} was already {job.review.status.value}")
        now = utcnow()
        review = Review(
            status=ReviewStatus(request.decision), by=identity.name, at=now, reason=reason
        )
        changes: dict[str, object] = {}
        if review.status is ReviewStatus.APPROVED:
            changes["rtstruct_sop_instance_uid"] = _approve(state, job, identity, now)
            review.unapproved_sop_instance_uid = job.rtstruct_sop_instance_uid
        job = state.store.update(job_id, review=review, **changes)
    record_decision(audit, job, identity)
    return job


def _approve(state: ServiceState, job: Job, identity: Identity, now: datetime) -> str:
    """Write the approved RTSTRUCT in place of the unapproved one (kept as a copy); its UID."""
    current = state.files.rtstruct(job.job_id)
    kept = current.with_name(UNAPPROVED_FILE)
    if not kept.exists():
        shutil.copy2(current, kept)
    when = now.astimezone().replace(tzinfo=None)  # review date and time of the site, local
    return write_approved_copy(kept, current, Approval(identity.name, when))


def counterfactual_clinical(job: Job, request: CounterfactualRequest) -> dict[str, object]:
    """The job's clinical fields with one field of one diagnosis changed (validated).

    A free-text ``note`` is dropped: the counterfactual reads the template text of its fields,
    since a note would still say what the original record said.

    Raises
    ------
    InvalidCounterfactualError
        ``field`` is not n_stage, side or surgery; ``side`` names no diagnosis; no change.
    InvalidClinicalError
        The changed value is not valid (the message names the field).
    """
    if request.field not in COUNTERFACTUAL_FIELDS:
        raise InvalidCounterfactualError(
            f"field: {request.field!r} is not one of {', '.join(COUNTERFACTUAL_FIELDS)}"
        )
    clinical = dict(job.clinical)
    diagnoses = [dict(d) for d in clinical.get("diagnoses", [])]
    position = 0
    if request.side is not None:
        sides = [d.get("side") for d in diagnoses]
        if request.side not in sides:
            raise InvalidCounterfactualError(f"side: the record has no {request.side!r} diagnosis")
        position = sides.index(request.side)
    if not diagnoses:
        raise InvalidCounterfactualError("field: the job has no diagnosis to change")
    if diagnoses[position].get(request.field) == request.value:
        raise InvalidCounterfactualError(f"value: {request.field} is already {request.value!r}")
    diagnoses[position][request.field] = request.value
    clinical["diagnoses"] = diagnoses
    clinical.pop("note", None)
    return parse_clinical(clinical).model_dump(mode="json")


def _link_inputs(state: ServiceState, source_id: str, target_id: str) -> None:
    source, target = state.files.input_dir(source_id), state.files.input_dir(target_id)
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)


def start_counterfactual(
    state: ServiceState, job_id: str, request: CounterfactualRequest, identity: Identity
) -> Job:
    """Queue a job on the same stored CT with one clinical field changed, for ``identity``.

    The new job is ``identity``'s (``submitted_by``).

    Raises
    ------
    JobNotFoundError
        No such job, or another submitter's.
    JobNotFinishedError
        The original job has not succeeded.
    InvalidCounterfactualError, InvalidClinicalError
        See :func:`counterfactual_clinical`.
    """
    original = visible_job(state.store, job_id, identity)
    if original.status is not JobStatus.SUCCEEDED:
        raise JobNotFinishedError(f"job {job_id} is {original.status.value}; compare after success")
    clinical = counterfactual_clinical(original, request)
    new_id = new_job_id()
    try:
        _link_inputs(state, job_id, new_id)
    except OSError:
        state.files.remove(new_id)
        raise
    job = Job(
        job_id=new_id,
        clinical=clinical,
        series_instance_uid=original.series_instance_uid,
        source="counterfactual",
        counterfactual_of=job_id,
        submitted_by=identity.name,
    )
    state.store.create(job)
    submit_or_fail(state, new_id)
    log.info("counterfactual job %s of %s queued (%s changed)", new_id, job_id, request.field)
    return job


@router.post(
    "/jobs/{job_id}/review",
    response_model=JobView,
    summary="Approve or reject the structures of a succeeded job (once)",
    responses=problem_responses(401, 403, 404, 409, 422),
)
def review_job(
    job_id: str,
    body: ReviewRequest,
    state: StateDep,
    identity: Reviewer,
    audit: AuditDep,
    desk: DeskDep,
) -> JobView:
    """The reviewer is the caller's identity; the answer is the job with its review."""
    job = decide(state, job_id, body, identity, audit)
    desk.poke()  # an approval may release an order's send-back
    return JobView.of(job)


@router.post(
    "/jobs/{job_id}/counterfactual",
    status_code=202,
    response_model=ContourAccepted,
    summary="Contour the same CT with one clinical field changed (a linked job)",
    responses=problem_responses(401, 404, 409, 422),
)
def counterfactual(
    job_id: str, body: CounterfactualRequest, state: StateDep, who: Authorized
) -> ContourAccepted:
    """The new job's ``counterfactual_of`` names ``job_id``; compare ``roi_volumes_cc``."""
    job = start_counterfactual(state, job_id, body, who)
    base = f"/jobs/{job.job_id}"
    return ContourAccepted(
        job_id=job.job_id,
        status_url=base,
        rtstruct_url=f"{base}/rtstruct",
        preview_url=f"{base}/preview.png",
    )
