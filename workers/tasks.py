"""The one Celery task: run a stored job by id. Thin on purpose.

The task deserialises the job id, calls :func:`workers.pipeline.run_job` through the worker
process's runtime (model loaded once), which records every state change on the job record,
and returns the job's status (logged by Celery). A note that is not cached on a worker
without the language model sends the job on to the ``text`` queue (the job stays ``queued``).
A failure outside ``run_job`` (the hard time limit, handled in the main process) is recorded
on the job by :meth:`ContourTask.on_failure`.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from workers import runtime
from workers.celery_app import TASK_NAME


class ContourTask(Task):  # type: ignore[misc]
    """Base of the contour task: failures outside the pipeline become job states."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Record the failure on the job unless the job already finished."""
        job_id = args[0] if args else kwargs.get("job_id")
        if isinstance(job_id, str):
            runtime.fail_unfinished(runtime.parent_store(), job_id, exc, runtime.holder())


def send_to_queue(app: Celery, job_id: str, queue: str) -> None:
    """Publish the contour task for ``job_id`` on ``queue``."""
    app.send_task(TASK_NAME, args=[job_id], queue=queue, ignore_result=True)


def register_tasks(app: Celery) -> None:
    """Register the contour task on ``app`` (the gateway sends it by name)."""

    @app.task(name=TASK_NAME, bind=True, base=ContourTask)  # type: ignore[untyped-decorator]
    def contour(task: Task, job_id: str) -> str:
        worker = runtime.current()
        text_queue, own_queue = worker.settings.jobs.text_queue, worker.settings.jobs.worker_queue
        return worker.run(
            job_id,
            reroute=lambda jid: send_to_queue(task.app, jid, text_queue),
            requeue=lambda jid: send_to_queue(task.app, jid, own_queue),
        )
