"""Where jobs go after the gateway accepts them.

:class:`EmbeddedDispatcher` runs them in a thread of the gateway process (no Redis needed);
the Celery dispatcher (:mod:`workers.celery_dispatch`) sends them to GPU workers. Both end in
:func:`workers.pipeline.run_job`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from model.errors import LlmctvError
from workers.jobs import JobFiles, JobStatus, JobStore, iter_jobs
from workers.pipeline import fail_job, run_job
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from workers.engine import ContourEngine

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
    from workers.engine import ContourEngine

    return ContourEngine.from_settings(settings)


class EmbeddedDispatcher:
    """One worker thread in the gateway process, with the model loaded once.

    Jobs left queued or running by a previous process (a crash, a restart) are queued again at
    start, so none is lost.
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
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker thread and re-queue unfinished jobs."""
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
        """Let the current job finish, then end the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=self.settings.task_hard_time_limit)
            self._thread = None

    def describe(self) -> dict[str, object]:
        """Mode, queue length and whether the model is loaded."""
        return {
            "mode": "embedded",
            "queued": self._queue.qsize(),
            "model_loaded": self._engine is not None,
        }

    def _load(self) -> ContourEngine | None:
        if self._engine is None and self._engine_error is None:
            try:
                self._engine = self._engine_factory(self.settings)
            except LlmctvError as exc:
                log.error("the model cannot be loaded: %s", exc)
                self._engine_error = exc
        return self._engine

    def _loop(self) -> None:
        self._load()
        while (job_id := self._queue.get()) != _STOP:
            engine = self._load()
            if engine is None and self._engine_error is not None:
                fail_job(self.store, job_id, self._engine_error)
                continue
            if engine is not None:
                run_job(job_id, self.store, self.files, engine, self.settings)
