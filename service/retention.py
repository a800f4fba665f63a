"""Retention: jobs, closed orders and received series older than ``job_retention_hours`` go.

A job is never deleted while it is still needed (:class:`RetentionHolds`): pending review where
its RTSTRUCT may leave only after approval, or referenced by a live order (waiting for its
approval, or approved and not yet sent). Each such job is kept and its reason logged.

A job goes with its files and record; an order record goes once nothing more will happen to it
(:attr:`service.orders.Order.closed`), so the order desk's polling never grows without bound.
A series received over DICOM (``<storage>/dicom/received/<study>/<series>/``, patient data)
goes once none of its files changed for the retention period; jobs hold their own copies (hard
links) of the instances they use.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from service.dicomnet.storage import identity_marker
from service.orders import OrderStore
from workers.jobs import Job, JobFiles, JobStatus, JobStore, iter_jobs, utcnow
from workers.review import ReviewStatus, needs_approval

log = logging.getLogger(__name__)


Hold = Callable[[Job], str | None]


@dataclass(frozen=True)
class RetentionHolds:
    """Why a finished, old job must stay.

    Parameters
    ----------
    orders
        The order store (``None``: no orders in this deployment).
    require_review, hold_needs_attention
        The review settings: with them a succeeded job pending review is still needed.
    """

    orders: OrderStore | None
    require_review: bool
    hold_needs_attention: bool

    def hold(self) -> Hold:
        """A function naming the reason to keep a job, or ``None``; live orders read now."""
        live = set()
        if self.orders is not None:
            live = {o.job_id for o in self.orders.all() if o.job_id and not o.closed}

        def reason(job: Job) -> str | None:
            if job.job_id in live:
                return "a live order references it"
            pending = job.review.status is ReviewStatus.PENDING
            gated = needs_approval(self.require_review, self.hold_needs_attention, job.attention)
            if job.status is JobStatus.SUCCEEDED and pending and gated:
                return "pending review"
            return None

        return reason


def purge_expired(
    store: JobStore, files: JobFiles, retention_hours: float, hold: Hold | None = None
) -> int:
    """Delete finished jobs created more than ``retention_hours`` ago; returns how many.

    ``hold`` names a reason to keep a job (:meth:`RetentionHolds.hold`); such jobs stay.
    """
    cutoff = utcnow() - timedelta(hours=retention_hours)
    removed = 0
    for job in iter_jobs(store):
        if job.status.finished and job.created_at < cutoff:
            why = hold(job) if hold is not None else None
            if why is not None:
                log.info("retention keeps job %s: %s", job.job_id, why)
                continue
            files.remove(job.job_id)
            store.delete(job.job_id)
            removed += 1
    if removed:
        log.info("retention removed %d jobs older than %g h", removed, retention_hours)
    return removed


def purge_closed_orders(orders: OrderStore, retention_hours: float) -> int:
    """Delete closed orders created more than ``retention_hours`` ago; returns how many."""
    cutoff = utcnow() - timedelta(hours=retention_hours)
    removed = 0
    for order in orders.all():
        if order.closed and order.created_at < cutoff:
            orders.delete(order.order_id)
            removed += 1
    if removed:
        log.info("retention removed %d orders older than %g h", removed, retention_hours)
    return removed


def _newest_change(folder: Path) -> float:
    """The latest modification time (epoch s) of ``folder`` and the files in it."""
    newest = folder.stat().st_mtime
    for path in folder.iterdir():
        newest = max(newest, path.lstat().st_mtime)
    return newest


def purge_received(received: Path, retention_hours: float) -> int:
    """Delete received series untouched for ``retention_hours``; returns how many.

    Series folders are ``<received>/<study>/<series>/``; a study folder left without series
    goes too once its own files (a refusal note) are as old.
    """
    if not received.is_dir():
        return 0
    cutoff = time.time() - retention_hours * 3600.0
    removed = 0
    for study in [p for p in received.iterdir() if p.is_dir() and not p.is_symlink()]:
        for series in [p for p in study.iterdir() if p.is_dir() and not p.is_symlink()]:
            try:
                if _newest_change(series) < cutoff:
                    shutil.rmtree(series)
                    identity_marker(received, study.name, series.name).unlink(missing_ok=True)
                    removed += 1
            except OSError as exc:
                log.warning("retention cannot remove series %s: %s", series.name, exc.strerror)
        try:  # a study left with no series (at most an old refusal note) goes too
            left = list(study.iterdir())
            newest = max((p.lstat().st_mtime for p in left), default=0.0)
            if not any(p.is_dir() for p in left) and newest < cutoff:
                shutil.rmtree(study)
        except OSError:
            continue
    if removed:
        log.info("retention removed %d received series older than %g h", removed, retention_hours)
    return removed


class RetentionTimer:
    """Runs the purges at start and then every ``interval_s`` in a daemon thread.

    ``received`` is the DICOM listener's storage; by default ``<storage>/dicom/received``.
    ``holds`` keeps jobs still needed (by default: those a live order references).
    """

    def __init__(
        self,
        store: JobStore,
        files: JobFiles,
        retention_hours: float,
        interval_s: float = 3600.0,
        orders: OrderStore | None = None,
        received: Path | None = None,
        holds: RetentionHolds | None = None,
    ) -> None:
        self.holds = holds or RetentionHolds(orders, False, False)
        self.store = store
        self.files = files
        self.orders = orders
        self.received = received if received is not None else files.root / "dicom" / "received"
        self.retention_hours = retention_hours
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin the periodic purge."""
        self._thread = threading.Thread(target=self._loop, name="llmctv-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the periodic purge."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            purge_expired(self.store, self.files, self.retention_hours, self.holds.hold())
            if self.orders is not None:
                purge_closed_orders(self.orders, self.retention_hours)
            purge_received(self.received, self.retention_hours)
            self._stop.wait(self.interval_s)
