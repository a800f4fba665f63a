"""The audit trail on the gateway's side: ``GET /audit``, order and DICOM events, start-up.

The log itself is :class:`workers.audit.AuditLog` (re-exported here), shared with the workers,
which record job starts and ends. Faces call :meth:`AuditLog.record` directly, e.g. a review
decision::

    audit.record(AuditKind.REVIEW_DECISION, identity.name, job_id=job_id, decision="approved")

where ``audit`` is ``request.app.state.llmctv_audit``. Orders are audited by
:class:`AuditedOrderStore` (created, matched, sent, send failed, expired), DICOM associations
and STOW-RS requests by :data:`DICOM_EVENTS` (the listener's and the DICOMweb receiver's
hooks).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from service.auth import Admin
from service.orders import Order, OrderStatus, OrderStore, SendStatus
from service.settings import Settings
from workers.audit import AuditKind, AuditLog, hash_identifier
from workers.counters import LocalMetrics, MetricsSink
from workers.job_events import ACTOR

__all__ = [
    "DICOM_EVENTS",
    "AuditKind",
    "AuditLog",
    "AuditedOrderStore",
    "DicomEvents",
    "hash_identifier",
    "public_settings",
    "router",
]

router = APIRouter()
_SECRET_WORDS = ("token", "secret", "password", "key")


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def public_settings(settings: Settings) -> dict[str, Any]:
    """The settings without secrets: tokens dropped, credentials cut from URLs."""
    public: dict[str, Any] = {}
    for name, value in settings.model_dump(mode="json").items():
        if any(word in name for word in _SECRET_WORDS) and name != "api_tokens_file":
            continue
        public[name] = _without_credentials(value) if name.endswith("_url") and value else value
    public["api_identities"] = len(settings.api_tokens)
    return public


class AuditedOrderStore(OrderStore):
    """An :class:`~service.orders.OrderStore` that audits every change of an order's state.

    Also counts RTSTRUCT send-backs (``rtstruct_sends{outcome}``).
    """

    def __init__(self, root: Path, audit: AuditLog, metrics: MetricsSink) -> None:
        super().__init__(root)
        self.audit = audit
        self.metrics = metrics

    def create(self, order: Order) -> None:
        """Store a new order; audit it."""
        super().create(order)
        self.audit.record(
            AuditKind.ORDER_CREATED,
            ACTOR.get() or "api",
            order_id=order.order_id,
            study_instance_uid=order.study_instance_uid,
            accession_number=order.accession_number,
            destination=order.destination,
        )

    def update(self, order_id: str, **changes: Any) -> Order:
        """Change fields atomically; audit a new status or send-back outcome."""
        before = self.get(order_id)
        after = super().update(order_id, **changes)
        if after.status is not before.status:
            self._status_changed(after)
        if after.send.status is not before.send.status:
            self._send_changed(after)
        return after

    def _status_changed(self, order: Order) -> None:
        who = "order-desk"
        if order.status is OrderStatus.MATCHED:
            self.audit.record(
                AuditKind.ORDER_MATCHED,
                who,
                order_id=order.order_id,
                job_id=order.job_id,
                series_instance_uid=order.series_instance_uid,
            )
        else:
            code = (order.error or {}).get("code")
            self.audit.record(
                f"order.{order.status.value}", who, order_id=order.order_id, code=code
            )

    def _send_changed(self, order: Order) -> None:
        if order.send.status not in (SendStatus.SENT, SendStatus.FAILED):
            return
        sent = order.send.status is SendStatus.SENT
        self.metrics.incr("rtstruct_sends", {"outcome": "sent" if sent else "failed"})
        self.audit.record(
            AuditKind.ORDER_SENT if sent else AuditKind.ORDER_SEND_FAILED,
            "order-desk",
            order_id=order.order_id,
            job_id=order.job_id,
            destination=order.destination,
            attempts=order.send.attempts,
        )


class DicomEvents:
    """Audit entries and metrics of DICOM associations (hooks called by the listener).

    A no-op until :meth:`configure` (the gateway's start-up); one per process.
    """

    def __init__(self) -> None:
        self.audit: AuditLog | None = None
        self.metrics: MetricsSink = LocalMetrics()

    def configure(self, audit: AuditLog, metrics: MetricsSink) -> None:
        """Where the events go from now on."""
        self.audit, self.metrics = audit, metrics

    def association_accepted(self, calling_ae: str, address: str) -> None:
        """A peer's association was accepted."""
        self.metrics.incr("dicom_associations", {"outcome": "accepted", "reason": ""})
        if self.audit is not None:
            who = f"{calling_ae.strip()}@{address}"
            self.audit.record(AuditKind.DICOM_ACCEPTED, who, calling_ae=calling_ae.strip())

    def association_rejected(self, calling_ae: str, address: str, reason: str) -> None:
        """A peer's association was rejected; ``reason`` is a short code."""
        self.metrics.incr("dicom_associations", {"outcome": "rejected", "reason": reason})
        if self.audit is not None:
            who = f"{calling_ae.strip()}@{address}"
            self.audit.record(AuditKind.DICOM_REJECTED, who, reason=reason)

    def quarantined(self, sender: str, sop_instance_uid: str) -> None:
        """An instance was kept aside: its series holds another patient's instances."""
        self.metrics.incr("dicom_instances_quarantined", {})
        if self.audit is not None:
            self.audit.record(
                AuditKind.DICOM_QUARANTINED, sender, sop_instance_uid=sop_instance_uid
            )

    def stow_request(self, sender: str, stored: int, refused: int, status: int) -> None:
        """A STOW-RS request ended: instances stored and refused, the HTTP status answered."""
        if stored:
            self.metrics.incr("dicomweb_instances", {"outcome": "stored"}, stored)
        if refused:
            self.metrics.incr("dicomweb_instances", {"outcome": "refused"}, refused)
        if self.audit is not None:
            self.audit.record(
                AuditKind.DICOMWEB_STORE, sender, stored=stored, refused=refused, status=status
            )


DICOM_EVENTS = DicomEvents()
"""The process's DICOM event hooks (configured by :func:`service.app.create_app`)."""


class AuditEntries(BaseModel):
    """``GET /audit``."""

    entries: list[dict[str, Any]]


@router.get("/audit", response_model=AuditEntries, summary="Audit trail entries (admin)")
def read_audit(
    request: Request,
    _: Admin,
    since: Annotated[datetime | None, Query(description="ISO 8601 time, inclusive")] = None,
    kind: Annotated[str | None, Query(max_length=64, description="e.g. job.finished")] = None,
    job_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> AuditEntries:
    """Entries oldest first (the newest ``limit`` of those matching)."""
    audit: AuditLog = request.app.state.llmctv_audit
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return AuditEntries(entries=audit.read(since=since, kind=kind, job_id=job_id, limit=limit))
