"""What DICOM networking reports: audit entries and metrics of associations and instances.

The listener and the DICOMweb receiver are handed a :class:`DicomEvents` (the gateway's
composition root, :mod:`service.app`, builds one over its audit log and metrics); without one
they report to a :class:`DicomEvents` that records nothing and counts in memory.
"""

from __future__ import annotations

from workers.audit import AuditKind, AuditLog
from workers.counters import LocalMetrics, MetricsSink


class DicomEvents:
    """Audit entries and metrics of DICOM associations, instances and STOW-RS requests.

    Parameters
    ----------
    audit
        Where the entries go; ``None`` records none (``llmctv dicom-listener`` alone, tests).
    metrics
        Where the counters go (default: in memory).
    """

    def __init__(self, audit: AuditLog | None = None, metrics: MetricsSink | None = None) -> None:
        self.audit = audit
        self.metrics: MetricsSink = metrics if metrics is not None else LocalMetrics()

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
