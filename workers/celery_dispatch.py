"""The gateway's side of Celery: job records in Redis, jobs sent to the worker queue.

:func:`celery_backend` is what :func:`service.app.build_backend` uses when ``redis_url`` is set.
Every refresh also sweeps the running jobs for expired leases
(:class:`~workers.lease_watchdog.LeaseWatchdog`). ``GET /health`` must answer fast even when
Redis is slow or down, so :meth:`CeleryDispatcher.describe` returns facts gathered by a
background thread every :data:`REFRESH_S` seconds (queue lengths, live workers, stalled jobs)
and never touches the network.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from workers import facts
from workers.celery_app import create_celery_app
from workers.counters import RedisMetrics
from workers.errors import ServiceUnavailableError
from workers.jobs import JobFiles, utcnow
from workers.lease_watchdog import LeaseWatchdog
from workers.redis_store import RedisJobStore, connect
from workers.settings import WorkerSettings
from workers.tasks import send_to_queue

log = logging.getLogger(__name__)
REFRESH_S = 2.0


class CeleryDispatcher:
    """Sends jobs to Celery workers; keeps ``/health`` facts fresh in the background.

    Parameters
    ----------
    settings
        ``redis_url`` and the queue names are used.
    app
        The Celery application (:func:`workers.celery_app.create_celery_app`).
    client
        Redis client for queue lengths and worker facts.
    refresh_s
        Seconds between background refreshes of the facts.
    watchdog
        The lease watchdog swept at every refresh (stalled jobs are handed on and reported).
    """

    def __init__(
        self,
        settings: WorkerSettings,
        app: Celery,
        client: redis.Redis,
        refresh_s: float = REFRESH_S,
        watchdog: LeaseWatchdog | None = None,
    ) -> None:
        self.settings = settings
        self.app = app
        self.client = client
        self.refresh_s = refresh_s
        self.watchdog = watchdog
        self._facts: dict[str, object] = {"mode": "celery", "broker": "unknown"}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the background refresh (the first one at once, in the thread)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="llmctv-health", daemon=True)
        self._thread.start()

    def submit(self, job_id: str) -> None:
        """Queue a stored job for the workers.

        Raises
        ------
        ServiceUnavailableError
            The broker cannot be reached.
        """
        try:
            send_to_queue(self.app, job_id, self.settings.jobs.worker_queue)
        except (OperationalError, redis.RedisError) as exc:
            raise ServiceUnavailableError(f"the job queue cannot be reached: {exc}") from exc

    def stop(self) -> None:
        """Stop the background refresh (queued jobs stay in Redis for the workers)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def describe(self) -> dict[str, object]:
        """The latest facts (mode, broker state, queue lengths, workers); never blocks."""
        with self._lock:
            return dict(self._facts)

    def gather(self) -> dict[str, object]:
        """Read the facts from Redis now (blocking; used by the background thread)."""
        queues = (self.settings.jobs.worker_queue, self.settings.jobs.text_queue)
        with self.client.pipeline(transaction=False) as pipe:
            for name in queues:
                pipe.llen(name)
            lengths = pipe.execute()
        workers: list[dict[str, Any]] = facts.read_all(self.client)
        now = utcnow()
        stalls = self.watchdog.sweep(now) if self.watchdog is not None else []
        return {
            "mode": "celery",
            "broker": "ok",
            "queued": {name: int(n) for name, n in zip(queues, lengths, strict=True)},
            "workers": workers,
            "workers_with_text_encoder": sum(1 for w in workers if w.get("text_encoder")),
            "stalled_jobs": len(stalls),
            "longest_stall_s": round(max((s.stalled_s for s in stalls), default=0.0), 1),
            "job_stall_timeout_s": self.settings.jobs.job_stall_timeout,
            "checked_at": now.isoformat(timespec="seconds"),
        }

    def _refresh_once(self) -> None:
        try:
            found = self.gather()
        except redis.RedisError as exc:
            log.warning("health facts not refreshed: %s", exc)
            found = {**self.describe(), "broker": "unreachable"}
        with self._lock:
            self._facts = found

    def _loop(self) -> None:
        self._refresh_once()
        while not self._stop.wait(self.refresh_s):
            self._refresh_once()


def celery_backend(
    settings: WorkerSettings, files: JobFiles
) -> tuple[RedisJobStore, CeleryDispatcher]:
    """Job store and dispatcher of a gateway whose workers run under Celery on Redis.

    ``files`` (CT input, RTSTRUCT output) stay in the storage folder shared with the workers;
    only the records move to Redis.
    """
    client = connect(settings.jobs.redis_url or "")
    app = create_celery_app(settings)
    log.info("jobs go to Celery queue %r under %s", settings.jobs.worker_queue, files.root)
    store = RedisJobStore(client)
    watchdog = LeaseWatchdog(
        store,
        lambda job_id: send_to_queue(app, job_id, settings.jobs.worker_queue),
        RedisMetrics(client),
    )
    return store, CeleryDispatcher(settings, app, client, watchdog=watchdog)
