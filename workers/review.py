"""The review of a finished job: a person approves or rejects its structures before use.

The record is part of the job (:attr:`workers.jobs.Job.review`); it names the reviewer by the
name of their API identity, never a patient. Decisions are final: a second one is refused.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel

from model.errors import LlmctvError


class ReviewStatus(StrEnum):
    """Where the review of a job stands."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class Review(BaseModel):
    """The review of one job (``pending`` until someone decides)."""

    status: ReviewStatus = ReviewStatus.PENDING
    by: str | None = None
    at: datetime | None = None
    reason: str | None = None
    unapproved_sop_instance_uid: str | None = None


class AlreadyReviewedError(LlmctvError):
    """A second review decision on a job that was already approved or rejected."""

    code = "already_reviewed"


class StructureSetRejectedError(LlmctvError):
    """The job's structure set was rejected in review: only reviewers may still fetch it (marked
    REJECTED); nobody else may use it."""

    code = "structure_set_rejected"


class ReviewRequiredError(LlmctvError):
    """The RTSTRUCT may not leave before a reviewer approved it (``require_review``)."""

    code = "review_required"


def needs_approval(
    require_review: bool, hold_needs_attention: bool, attention: list[str] | tuple[str, ...]
) -> bool:
    """Whether a job's RTSTRUCT may leave only after approval: review is required, or the job
    has needs-attention findings and the site holds such jobs (``hold_needs_attention``)."""
    return require_review or (hold_needs_attention and bool(attention))
