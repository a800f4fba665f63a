"""The model of one worker process, loaded once, and what a task does with it.

``llmctv worker`` calls :func:`configure` in the Celery main process; each prefork pool
process then builds its :class:`WorkerRuntime` in ``worker_process_init`` (:func:`on_process_init`)
so the model loads once per process, after the fork (CUDA is never touched before it). A
worker started with ``worker_text_encoder=false`` never loads the language model: it keys the
embedding cache from the checkpoint and hands jobs whose note is not cached to the ``text``
queue, served by workers that hold the model.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from kombu.exceptions import OperationalError

from model.contouring.engine import ContourEngine
from model.errors import ConfigurationError, ContextNotCachedError, LlmctvError
from workers import facts
from workers.audit import AuditLog
from workers.counters import RedisMetrics
from workers.embedding_cache import RedisContextCache
from workers.errors import JobNotFoundError, JobTimeoutError
from workers.job_events import ObservedJobStore
from workers.jobs import JobFiles, JobStatus, JobStore
from workers.model_loading import load_engine
from workers.pipeline import fail_job, run_job
from workers.redis_store import RedisJobStore, connect
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)

Reroute = Callable[[str], None]


@dataclass
class WorkerOptions:
    """What the main process decided before the pool starts (inherited by each fork)."""

    settings: WorkerSettings
    node: str
    queues: list[str]


def default_node(text_encoder: bool) -> str:
    """Celery node name: ``llmctv-text@<host>`` or ``llmctv-cache@<host>``."""
    return f"llmctv-{'text' if text_encoder else 'cache'}@{socket.gethostname()}"


def observed_store(settings: WorkerSettings, client: redis.Redis, node: str) -> ObservedJobStore:
    """Job records in Redis; starts and ends audited and counted (``llmctv:metrics``)."""
    audit = AuditLog.from_settings(settings.storage)
    actor = f"worker:{node}"  # also the holder of its claims (see holder())
    return ObservedJobStore(RedisJobStore(client), audit, RedisMetrics(client), actor)


def build_engine(settings: WorkerSettings, cache: RedisContextCache) -> ContourEngine:
    """The worker's model: on the GPU when there is one; without the LLM when so configured."""
    return load_engine(settings, cache, with_text_encoder=settings.jobs.worker_text_encoder)


class WorkerRuntime:
    """Store, files, embedding cache and model of one worker process."""

    def __init__(self, options: WorkerOptions, client: redis.Redis) -> None:
        self.options = options
        self.settings = options.settings
        self.client = client
        self.store = observed_store(self.settings, client, options.node)
        self.files = JobFiles(self.settings.storage.storage_dir)
        self.cache = RedisContextCache(client)
        self.engine: ContourEngine | None = None
        self.error: LlmctvError | None = None
        self.jobs = 0
        self.facts = facts.WorkerFacts(
            node=options.node,
            pid=os.getpid(),
            queues=list(options.queues),
            text_encoder=self.settings.jobs.worker_text_encoder,
        )

    def load(self) -> None:
        """Load the model (an unusable model is recorded, and fails jobs, not the worker)."""
        try:
            self.engine = build_engine(self.settings, self.cache)
        except LlmctvError as exc:
            log.error("the model cannot be loaded: %s", exc)
            self.error = exc
            self.facts.model_error = exc.code
            return
        predictor = self.engine.predictor
        self.facts.device = predictor.device.type
        self.facts.checkpoint = predictor.checkpoint_hash
        log.info(
            "model loaded on %s (checkpoint %s, text encoder %s)",
            self.facts.device,
            self.facts.checkpoint,
            "loaded" if self.settings.jobs.worker_text_encoder else "off",
        )

    def current_facts(self) -> facts.WorkerFacts:
        """Facts with the current counters."""
        context = self.engine.predictor.context if self.engine is not None else None
        self.facts.jobs = self.jobs
        self.facts.llm_forward_calls = context.forward_calls if context is not None else 0
        self.facts.cache_hits = self.cache.hits
        self.facts.cache_misses = self.cache.misses
        return self.facts

    def publish(self) -> None:
        """Write this process's facts to Redis."""
        facts.publish(self.client, self.current_facts())

    def run(self, job_id: str, reroute: Reroute, requeue: Reroute | None = None) -> str:
        """Run one job; returns its status afterwards (``queued`` when handed on).

        When Redis goes away mid-job (its record cannot be written), the job is neither failed
        nor dropped: the task waits for Redis, then queues the job again with ``requeue``.
        """
        self.jobs += 1
        try:
            return self._run(job_id, reroute)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if requeue is None:
                raise
            return self._requeue_after_outage(job_id, requeue, exc)
        finally:
            try:
                self.publish()
            except redis.RedisError as exc:
                log.warning("cannot publish worker facts: %s", exc)

    def _requeue_after_outage(self, job_id: str, requeue: Reroute, exc: Exception) -> str:
        """Wait for Redis (up to the soft time limit), then queue the job again."""
        log.warning("job %s interrupted: Redis unreachable (%s); waiting for it", job_id, exc)
        deadline = time.monotonic() + self.settings.jobs.task_soft_time_limit
        while True:
            try:
                self.store.update(job_id, status=JobStatus.QUEUED, lease_until=None, progress=0.0)
                requeue(job_id)
            except (redis.RedisError, OperationalError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
                continue
            log.info("job %s queued again after the Redis outage", job_id)
            return JobStatus.QUEUED.value

    def _run(self, job_id: str, reroute: Reroute) -> str:
        if self.engine is None:
            if self.error is not None and not self.store.get(job_id).status.finished:
                fail_job(self.store, job_id, self.error)
            return self.store.get(job_id).status.value
        try:
            run_job(
                job_id,
                self.store,
                self.files,
                self.engine,
                self.settings,
                timeouts=(SoftTimeLimitExceeded,),
            )
        except ContextNotCachedError:
            reroute(job_id)
            log.info(
                "job %s: note not cached; sent to queue %r", job_id, self.settings.jobs.text_queue
            )
            return JobStatus.QUEUED.value
        return self.store.get(job_id).status.value


def fail_unfinished(
    store: JobStore, job_id: str, exc: BaseException, holder: str | None = None
) -> None:
    """Record a task failure outside :func:`run_job` (a hard time limit) as the job's error.

    Only a running job is failed, and only when ``holder`` (this worker) holds its latest
    claim: a job the lease watchdog handed to another worker is left to that worker.
    """
    error: BaseException = exc
    if isinstance(exc, TimeLimitExceeded):
        error = JobTimeoutError("the job ran past the hard time limit")
    try:  # a queued job was handed on (lease watchdog): its next claim decides
        job = store.get(job_id)
        ours = holder is None or job.claimed_by in (None, holder)
        if job.status is JobStatus.RUNNING and ours:
            fail_job(store, job_id, error)
    except (JobNotFoundError, redis.RedisError) as problem:
        log.warning("job %s: cannot record the task failure: %s", job_id, problem)


class _Process:
    """This process's options (main process) and runtime (pool process)."""

    options: WorkerOptions | None = None
    runtime: WorkerRuntime | None = None
    heartbeat: facts.Heartbeat | None = None
    parent_store: ObservedJobStore | None = None


def configure(options: WorkerOptions) -> None:
    """Remember the worker options; pool processes inherit them when forked."""
    _Process.options = options


def options() -> WorkerOptions:
    """The configured options (raises if :func:`configure` was not called)."""
    if _Process.options is None:
        raise ConfigurationError("worker options not configured (start with `llmctv worker`)")
    return _Process.options


def current() -> WorkerRuntime:
    """This process's runtime, built on first use when ``worker_process_init`` did not run."""
    if _Process.runtime is None:
        on_process_init()
    runtime = _Process.runtime
    if runtime is None:  # pragma: no cover - on_process_init always sets it
        raise RuntimeError("worker runtime missing")
    return runtime


def holder() -> str:
    """How this worker's claims are recorded on a job (``worker:<node>``)."""
    return f"worker:{options().node}"


def parent_store() -> ObservedJobStore:
    """A job store for the main process (hard time limits are handled there)."""
    if _Process.parent_store is None:
        opts = options()
        client = connect(opts.settings.jobs.redis_url or "")
        _Process.parent_store = observed_store(opts.settings, client, opts.node)
    return _Process.parent_store


def on_process_init(**_: Any) -> None:
    """``worker_process_init``: load the model, publish facts, start the heartbeat."""
    opts = options()
    runtime = WorkerRuntime(opts, connect(opts.settings.jobs.redis_url or ""))
    runtime.load()
    _Process.runtime = runtime
    try:
        runtime.publish()
    except redis.RedisError as exc:
        log.warning("cannot publish worker facts: %s", exc)
    _Process.heartbeat = facts.Heartbeat(runtime.publish)
    _Process.heartbeat.start()


def on_process_shutdown(**_: Any) -> None:
    """``worker_process_shutdown``: stop the heartbeat and withdraw the facts."""
    if _Process.heartbeat is not None:
        _Process.heartbeat.stop()
    runtime = _Process.runtime
    if runtime is not None:
        try:
            facts.withdraw(runtime.client, runtime.facts)
        except redis.RedisError:
            log.debug("facts not withdrawn (Redis unreachable)")
