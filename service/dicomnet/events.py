"""What DICOM networking reports: audit entries and metrics of associations and instances.

The listener and the DICOMweb receiver are handed a :class:`DicomEvents` (the gateway's
composition root, :mod:`service.app`, builds one over its audit log and metrics); without one
they report to a :class:`DicomEvents` that records nothing and counts in memory.

Rejected associations are counted one by one in the metric but **aggregated in the audit**:
a peer retrying an unknown AE title 300 times must not write 300 entries (nor fill the audit
disk). Rejections are grouped by (reason, hash of the calling AE title, address) in windows of
``rejection_window_s`` (60 s): the first rejection of a window is written at once, as before;
the ones that follow within the window are counted and written as **one** summary entry
(``repeats``: how many, ``window_s``, ``first_at``/``last_at``) when the window ends
(:meth:`DicomEvents.flush_rejections`, called by the listener's watch every second and when it
stops). At most :data:`MAX_TITLES_PER_ADDRESS` AE titles are told apart per address and
window (a peer cycling through titles is folded into one ``*`` group) and at most
:data:`MAX_WINDOWS` groups are open, so memory and entries stay bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from workers.audit import AuditKind, AuditLog, hash_identifier
from workers.counters import LocalMetrics, MetricsSink

#: Rejection windows open at once; beyond it, rejections are grouped by reason alone.
MAX_WINDOWS = 1024
#: Distinct calling AE titles per address and reason within one window; further ones are one
#: group (``*``).
MAX_TITLES_PER_ADDRESS = 8
#: The AE title of a folded group.
ANY_TITLE = "*"


@dataclass
class _Window:
    """Rejections of one group after the first one, within one window."""

    who: str
    reason: str
    calling_ae_hash: str
    opened: float
    first_at: str
    repeats: int = 0
    last_at: str = ""


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class DicomEvents:
    """Audit entries and metrics of DICOM associations, instances and STOW-RS requests.

    Parameters
    ----------
    audit
        Where the entries go; ``None`` records none (``llmctv dicom-listener`` alone, tests).
    metrics
        Where the counters go (default: in memory).
    rejection_window_s
        Rejections of one group within this many seconds make one summary entry.
    clock
        Monotonic seconds (tests may inject one).
    """

    def __init__(
        self,
        audit: AuditLog | None = None,
        metrics: MetricsSink | None = None,
        *,
        rejection_window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.audit = audit
        self.metrics: MetricsSink = metrics if metrics is not None else LocalMetrics()
        self.rejection_window_s = rejection_window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str, str], _Window] = {}

    def association_accepted(self, calling_ae: str, address: str, *, tls: bool = False) -> None:
        """A peer's association was accepted (``tls``: over DICOM TLS)."""
        self.metrics.incr("dicom_associations", {"outcome": "accepted", "reason": ""})
        if self.audit is not None:
            who = f"{calling_ae.strip()}@{address}"
            if tls:
                self.audit.record(
                    AuditKind.DICOM_ACCEPTED, who, calling_ae=calling_ae.strip(), tls=True
                )
            else:
                self.audit.record(AuditKind.DICOM_ACCEPTED, who, calling_ae=calling_ae.strip())

    def association_rejected(self, calling_ae: str, address: str, reason: str) -> None:
        """A peer's association was rejected; ``reason`` is a short code.

        Counted at once; audited once per group and window (see the module's description).
        """
        self.metrics.incr("dicom_associations", {"outcome": "rejected", "reason": reason})
        if self.audit is None:
            return
        title = calling_ae.strip()
        now = self._clock()
        due = self._take_due(now, force=False)
        with self._lock:
            key, title = self._group(reason, title, address)
            window = self._windows.get(key)
            if window is not None:
                window.repeats += 1
                window.last_at = _now_iso()
                first = None
            else:
                first = _Window(
                    who=f"{title}@{address}",
                    reason=reason,
                    calling_ae_hash=key[1],
                    opened=now,
                    first_at=_now_iso(),
                )
                self._windows[key] = first
        self._write_summaries(due)
        if first is not None:
            self.audit.record(
                AuditKind.DICOM_REJECTED,
                first.who,
                reason=reason,
                calling_ae_hash=first.calling_ae_hash,
                window_s=self.rejection_window_s,
            )

    def _group(self, reason: str, title: str, address: str) -> tuple[tuple[str, str, str], str]:
        """The window key of a rejection and the title it is shown with (lock held)."""
        key = (reason, hash_identifier(title), address)
        if key in self._windows:
            return key, title
        titles = sum(1 for r, _, a in self._windows if r == reason and a == address)
        if titles >= MAX_TITLES_PER_ADDRESS:
            return (reason, ANY_TITLE, address), ANY_TITLE
        if len(self._windows) >= MAX_WINDOWS:
            return (reason, ANY_TITLE, ANY_TITLE), ANY_TITLE
        return key, title

    def _take_due(self, now: float, *, force: bool) -> list[_Window]:
        """Remove the windows that have ended (all with ``force``); returns them."""
        with self._lock:
            ended = [
                k
                for k, w in self._windows.items()
                if force or now - w.opened >= self.rejection_window_s
            ]
            return [self._windows.pop(k) for k in ended]

    def _write_summaries(self, windows: list[_Window]) -> None:
        if self.audit is None:
            return
        for window in windows:
            if not window.repeats:
                continue
            self.audit.record(
                AuditKind.DICOM_REJECTED,
                window.who,
                reason=window.reason,
                calling_ae_hash=window.calling_ae_hash,
                repeats=window.repeats,
                window_s=self.rejection_window_s,
                first_at=window.first_at,
                last_at=window.last_at,
            )

    def flush_rejections(self, *, force: bool = False) -> int:
        """Write the summary entries of ended windows (of every window with ``force``).

        Returns the number of rejections the written summaries account for.
        """
        due = self._take_due(self._clock(), force=force)
        self._write_summaries(due)
        return sum(w.repeats for w in due)

    def association_idle(self, calling_ae: str, address: str) -> None:
        """An association was released: nothing stored for the idle timeout."""
        self.metrics.incr("dicom_associations", {"outcome": "released", "reason": "idle"})

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
