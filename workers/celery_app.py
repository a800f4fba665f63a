"""The Celery application of llmctv: Redis broker and result store, at-least-once delivery.

A job is one message ``llmctv.contour(job_id)``. Its delivery rules follow what was measured
on Celery 5.7 / kombu 5.7 / Redis 7 (``shared/notes/celery-redis-redelivery.md``):

* acknowledged late (after the job), one message reserved per worker process
  (prefetch 1), and re-queued when the pool child dies (``task_reject_on_worker_lost``);
* a message whose worker was killed outright stays *unacked* in Redis and is delivered again
  once it is older than ``visibility_timeout``; workers look for such messages every
  ``unacked_restore_interval`` seconds (throttle 1) instead of kombu's 100 s;
* ``visibility_timeout`` must be longer than the longest job (the hard time limit), or a
  running job is delivered a second time: :func:`check_limits` refuses such settings;
* a claimed job holds a lease of ``job_stall_timeout`` seconds, renewed while it makes
  progress, and shorter than the visibility timeout: a re-delivered job finds it expired.

Tasks are idempotent: :func:`workers.pipeline.run_job` leaves a finished job alone. The job
record in Redis (:mod:`workers.redis_store`) is the state of record, so task results are not
stored (storing them would make the gateway subscribe to a result channel per job).
"""

from __future__ import annotations

from datetime import timedelta

from celery import Celery

from model.errors import ConfigurationError
from workers.settings import WorkerSettings

TASK_NAME = "llmctv.contour"


def check_limits(settings: WorkerSettings) -> None:
    """Refuse time limits that would re-deliver running jobs or never stop them.

    Raises
    ------
    ConfigurationError
        Unless ``0 < task_soft_time_limit < task_hard_time_limit < visibility_timeout``, or
        when ``redis_url`` is not set.
    """
    jobs = settings.jobs
    if not jobs.redis_url:
        raise ConfigurationError("LLMCTV_REDIS_URL is not set; Celery workers need Redis")
    soft, hard = jobs.task_soft_time_limit, jobs.task_hard_time_limit
    if not 0 < soft < hard < jobs.visibility_timeout:
        raise ConfigurationError(
            "need 0 < task_soft_time_limit < task_hard_time_limit < visibility_timeout, got "
            f"{soft:g} s, {hard:g} s, {jobs.visibility_timeout:g} s"
        )
    if not 0 < jobs.job_stall_timeout < jobs.visibility_timeout:
        raise ConfigurationError(
            "need 0 < job_stall_timeout < visibility_timeout (a re-delivered job must find its "
            f"lease expired), got {jobs.job_stall_timeout:g} s, "
            f"{jobs.visibility_timeout:g} s"
        )
    if jobs.unacked_restore_interval <= 0:
        raise ConfigurationError("unacked_restore_interval must be positive")
    if jobs.worker_queue == jobs.text_queue:
        raise ConfigurationError("worker_queue and text_queue must differ")


def create_celery_app(settings: WorkerSettings) -> Celery:
    """A configured Celery application for ``settings`` (connects to nothing yet)."""
    check_limits(settings)
    jobs = settings.jobs
    app = Celery("llmctv", broker=jobs.redis_url, backend=jobs.redis_url)
    transport = {
        "visibility_timeout": jobs.visibility_timeout,
        "unacked_restore_interval": jobs.unacked_restore_interval,
        "unacked_restore_throttle": 1,
    }
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=jobs.task_soft_time_limit,
        task_time_limit=jobs.task_hard_time_limit,
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": jobs.visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_default_queue=jobs.worker_queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_expires=timedelta(hours=settings.storage.job_retention_hours),
        worker_proc_alive_timeout=jobs.worker_start_timeout,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app
