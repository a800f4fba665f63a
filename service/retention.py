"""Retention: jobs older than the setting ``job_retention_hours`` are deleted, files and record."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from service.jobs import JobFiles, JobStore, iter_jobs, utcnow

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


class RetentionTimer:
    """Runs :func:`purge_expired` at start and then every ``interval_s`` in a daemon thread."""

    def __init__(
        self, store: JobStore, files: JobFiles, retention_hours: float, interval_s: float = 3600.0
    ) -> None:
        self.store = store
        self.files = files
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
            self._stop.wait(self.interval_s)
