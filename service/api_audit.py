"""``GET /audit``: the audit trail, for administrators.

The log itself is :class:`workers.audit.AuditLog`, shared with the workers, which record job
starts and ends. The gateway's faces record through :data:`service.deps.AuditDep`, e.g. a
review decision::

    audit.record(AuditKind.REVIEW_DECISION, identity.name, job_id=job_id, decision="approved")

Orders are audited by :class:`service.orders.AuditedOrderStore` (created, matched, sent, send
failed, expired), DICOM associations and STOW-RS requests by
:class:`service.dicomnet.events.DicomEvents`, the start-up by :mod:`service.app`
(``settings.loaded``, :func:`service.settings.public_settings`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from service.deps import Admin, AuditDep

router = APIRouter()


class AuditEntries(BaseModel):
    """``GET /audit``."""

    entries: list[dict[str, Any]]


@router.get("/audit", response_model=AuditEntries, summary="Audit trail entries (admin)")
def read_audit(
    audit: AuditDep,
    _: Admin,
    since: Annotated[datetime | None, Query(description="ISO 8601 time, inclusive")] = None,
    kind: Annotated[str | None, Query(max_length=64, description="e.g. job.finished")] = None,
    job_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> AuditEntries:
    """Entries oldest first (the newest ``limit`` of those matching)."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return AuditEntries(entries=audit.read(since=since, kind=kind, job_id=job_id, limit=limit))
