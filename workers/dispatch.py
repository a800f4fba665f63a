"""Where jobs go after the gateway accepts them.

:class:`EmbeddedDispatcher` runs them in a thread of the gateway process (no Redis needed);
the Celery dispatcher (:mod:`workers.celery_dispatch`) sends them to GPU workers. Both end in
:func:`workers.pipeline.run_job`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from model.errors import LlmctvError
from workers.jobs import JobFiles, JobStatus, JobStore, iter_jobs
from workers.model_loading import promoted_version, served_card
from workers.pipeline import fail_job, run_job
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from model.contouring.engine import ContourEngine

log = logging.getLogger(__name__)
_STOP = ""


class JobDispatcher(Protocol):
    """Accepts job ids whose record and files are stored."""

    def start(self) -> None:
        """Begin taking jobs (called once, by the gateway's start-up)."""

    def submit(self, job_id: str) -> None:
        """Queue a stored job."""

    def stop(self) -> None:
        """Stop taking jobs (running ones finish or are re-queued on the next start)."""

    def describe(self) -> dict[str, object]:
        """Facts for ``GET /health`` (mode, queue length); must be fast."""


def _load_engine(settings: WorkerSettings) -> ContourEngine:
    """The model of the settings (torch is imported here, in the worker thread)."""
    from workers.model_loading import load_engine

    return load_engine(settings)


class EmbeddedDispatcher:
    """One worker thread in the gateway process, with the model loaded once.

    Jobs left queued or running by a previous process (a crash, a restart) are queued again at
    start, so none is lost (each start counts as an attempt: see ``job_max_attempts``).
    With a models folder (``models_dir``, no ``checkpoint``), the promoted version is read
    before each job: when another version was promoted (or rolled back to), the worker loads
    it from the registry and the next job runs on it; a version that cannot be loaded fails
    the jobs (with its code) until another one is promoted.
    :meth:`stop` asks the running job to stop at its next progress step (it is queued again)
    and waits at most ``worker_stop_timeout`` seconds for the thread.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        store: JobStore,
        files: JobFiles,
        engine_factory: Callable[[WorkerSettings], ContourEngine] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.files = files
        self._engine_factory = engine_factory or _load_engine
        self._engine: ContourEngine | None = None
        self._engine_error: LlmctvError | None = None
        self._failed_for: str | None = None  # the promoted version whose load failed
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._running: str | None = None
        self._running_since: float | None = None
        self._last_progress: float | None = None

    def start(self) -> None:
        """Start the worker thread and re-queue unfinished jobs."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="llmctv-worker", daemon=True)
        self._thread.start()
        for job in iter_jobs(self.store):
            if not job.status.finished:
                self.store.update(job.job_id, status=JobStatus.QUEUED)
                self._queue.put(job.job_id)

    def submit(self, job_id: str) -> None:
        """Queue a stored job."""
        self._queue.put(job_id)

    def stop(self) -> None:
        """Stop the running job at its next step (queued again), then end the thread.

        Waits at most ``worker_stop_timeout`` seconds; a job stuck outside any progress step
        is left ``running`` with its lease and is queued again at the next start.
        """
        if self._thread is not None:
            self._stopping.set()
            self._queue.put(_STOP)
            self._thread.join(timeout=self.settings.jobs.worker_stop_timeout)
            if self._thread.is_alive():
                log.warning("the worker thread did not stop in time; its job runs again later")
            self._thread = None

    def describe(self) -> dict[str, object]:
        """Mode, queue length, whether the model is loaded, and the running job's age.

        ``running_job_age_s`` and ``last_progress_age_s`` (seconds, ``None`` when idle) let a
        readiness check see a stuck worker.
        """
        now = time.monotonic()
        since, progress = self._running_since, self._last_progress
        return {
            "mode": "embedded",
            "queued": self._queue.qsize(),
            "model_loaded": self._engine is not None,
            "worker_alive": self._thread is not None and self._thread.is_alive(),
            "running_job": self._running is not None,
            "running_job_age_s": None if since is None else round(now - since, 1),
            "last_progress_age_s": None if progress is None else round(now - progress, 1),
            "job_time_limit_s": self.settings.jobs.task_soft_time_limit,
            "model_error": self._engine_error.code if self._engine_error is not None else None,
            "model_version": self._serving_label(),
            **self._cache_counts(),
        }

    def _cache_counts(self) -> dict[str, int]:
        """Embedding-cache hits and misses of the loaded model (for ``/metrics``)."""
        cache = getattr(getattr(self._engine, "predictor", None), "cache", None)
        return {
            "cache_hits": int(getattr(cache, "hits", 0)),
            "cache_misses": int(getattr(cache, "misses", 0)),
        }

    def _progress_seen(self) -> bool:
        """The running job reached a progress step (called through ``should_stop``)."""
        self._last_progress = time.monotonic()
        return self._stopping.is_set()

    def _serving_label(self) -> str | None:
        engine = self._engine
        card = served_card(engine) if engine is not None else None
        return card.label if card is not None else None

    def _load(self) -> ContourEngine | LlmctvError:
        """The engine for the next job, or why there is none.

        Loaded once; loaded again from the registry when the promoted version is not the
        one the engine was loaded from (the injected factory makes only the first engine).
        """
        try:
            wanted = promoted_version(self.settings)
        except LlmctvError as exc:
            log.error("the promoted model version cannot be read: %s", exc)
            return exc
        engine = self._engine
        if engine is not None:
            card = served_card(engine)
            if wanted is None or (card is not None and card.version == wanted):
                return engine
            log.info("model version %s is promoted: loading it for the next job", wanted)
        elif self._engine_error is not None and wanted == self._failed_for:
            return self._engine_error
        factory = self._engine_factory
        self._engine_factory = _load_engine  # later loads follow the registry
        self._engine = None  # the old model is released before the new one loads
        try:
            self._engine = factory(self.settings)
        except LlmctvError as exc:
            log.error("the model cannot be loaded: %s", exc)
            self._engine_error, self._failed_for = exc, wanted
            return exc
        self._engine_error = self._failed_for = None
        return self._engine

    def _loop(self) -> None:
        self._load()
        while (job_id := self._queue.get()) != _STOP and not self._stopping.is_set():
            engine = self._load()
            if isinstance(engine, LlmctvError):
                fail_job(self.store, job_id, engine)
                continue
            self._run(job_id, engine)

    def _run(self, job_id: str, engine: ContourEngine) -> None:
        self._running, self._running_since = job_id, time.monotonic()
        self._last_progress = self._running_since
        try:
            run_job(
                job_id,
                self.store,
                self.files,
                engine,
                self.settings,
                should_stop=self._progress_seen,
            )
        finally:
            self._running = self._running_since = self._last_progress = None
