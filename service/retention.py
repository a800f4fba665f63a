"""Retention: jobs, closed orders and received series older than ``job_retention_hours`` go.

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
from datetime import timedelta
from pathlib import Path

from service.orders import OrderStore
from workers.jobs import JobFiles, JobStore, iter_jobs, utcnow

log = logging.getLogger(__name__)


def purge_expired(store: JobStore, files: JobFiles, retention_hours: float) -> int:
    """Delete finished jobs created more than ``retention_hours`` ago; returns how many."""
    cutoff = utcnow() - timedelta(hours=retention_hours)
    removed = 0
    for job in iter_jobs(store):
        if job.status.finished and job.created_at < cutoff:
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
    """

    def __init__(
        self,
        store: JobStore,
        files: JobFiles,
        retention_hours: float,
        interval_s: float = 3600.0,
        orders: OrderStore | None = None,
        received: Path | None = None,
    ) -> None:
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
            purge_expired(self.store, self.files, self.retention_hours)
            if self.orders is not None:
                purge_closed_orders(self.orders, self.retention_hours)
            purge_received(self.received, self.retention_hours)
            self._stop.wait(self.interval_s)
