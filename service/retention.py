"""Retention: jobs and closed orders older than ``job_retention_hours`` are deleted.

A job goes with its files and record; an order record goes once nothing more will happen to it
(:attr:`service.orders.Order.closed`), so the order desk's polling never grows without bound.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

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


class RetentionTimer:
    """Runs the purges at start and then every ``interval_s`` in a daemon thread."""

    def __init__(
        self,
        store: JobStore,
        files: JobFiles,
        retention_hours: float,
        interval_s: float = 3600.0,
        orders: OrderStore | None = None,
    ) -> None:
        self.store = store
        self.files = files
        self.orders = orders
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
            self._stop.wait(self.interval_s)
