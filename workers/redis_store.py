"""Job records in Redis, shared by the gateway and every Celery worker.

Layout (all keys start with ``llmctv:``)::

    llmctv:job:<job_id>   the record, JSON (:class:`~workers.jobs.Job`)
    llmctv:jobs           sorted set of job ids, scored by creation time (the index)
    llmctv:running        set of the ids of running jobs (the lease watchdog reads it)

Updates are atomic read-modify-write transactions (``WATCH``/``MULTI``/``EXEC``, retried
when another writer got in between), so a progress update from a worker never undoes a
status change, and an update never resurrects a deleted record. Records do not expire on
their own: retention (:mod:`service.retention`) deletes the record and the job's files
together, so neither outlives the other.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redis.client import Pipeline

from workers.errors import JobNotFoundError
from workers.jobs import Job, JobStatus, claimable, claimed, utcnow

log = logging.getLogger(__name__)

PREFIX = "llmctv:"
SOCKET_TIMEOUT_S = 10.0


def connect(url: str) -> redis.Redis:
    """A Redis client for ``url`` (connection pool; reconnects after a Redis restart)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=30,
    )


def _valid_id(job_id: str) -> str:
    if not job_id or not all(c in "0123456789abcdef" for c in job_id):
        raise JobNotFoundError(f"no job {job_id[:64]!r}")
    return job_id


class RedisJobStore:
    """A :class:`~workers.jobs.JobStore` in Redis; safe across threads and processes.

    Parameters
    ----------
    client
        A Redis client (see :func:`connect`).
    prefix
        Key prefix (several deployments may share one Redis with different prefixes).
    """

    def __init__(self, client: redis.Redis, prefix: str = PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self.index = f"{prefix}jobs"
        self.running = f"{prefix}running"

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}job:{_valid_id(job_id)}"

    def create(self, job: Job) -> None:
        """Store a new record and index it."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self._key(job.job_id), job.model_dump_json())
            pipe.zadd(self.index, {job.job_id: job.created_at.timestamp()})
            pipe.execute()

    def get(self, job_id: str) -> Job:
        """The record, or :class:`~workers.errors.JobNotFoundError`."""
        raw = self.client.get(self._key(job_id))
        if raw is None:
            raise JobNotFoundError(f"no job {job_id}")
        return Job.model_validate_json(raw)

    def update(self, job_id: str, **changes: Any) -> Job:
        """Change fields of a record atomically and return the new record."""
        key = self._key(job_id)
        updated: list[Job] = []

        def apply(pipe: Pipeline) -> None:
            raw = pipe.get(key)
            if raw is None:
                raise JobNotFoundError(f"no job {job_id}")
            job = Job.model_validate_json(raw).model_copy(update=changes)
            updated.append(Job.model_validate(job.model_dump()))
            pipe.multi()
            pipe.set(key, updated[-1].model_dump_json())
            self._index_running(pipe, updated[-1])

        self.client.transaction(apply, key)
        return updated[-1]

    def _index_running(self, pipe: Pipeline, job: Job) -> None:
        if job.status is JobStatus.RUNNING:
            pipe.sadd(self.running, job.job_id)
        else:
            pipe.srem(self.running, job.job_id)

    def claim(self, job_id: str, lease_s: float, holder: str = "") -> Job | None:
        """Atomically start the job (see :func:`~workers.jobs.claimable`); ``None`` if not ours."""
        key = self._key(job_id)
        result: list[Job | None] = []

        def apply(pipe: Pipeline) -> None:
            result.clear()
            raw = pipe.get(key)
            if raw is None:
                raise JobNotFoundError(f"no job {job_id}")
            now = utcnow()
            job = Job.model_validate_json(raw)
            if not claimable(job, now):
                result.append(None)
                return
            started = claimed(job, now, lease_s, holder)
            result.append(started)
            pipe.multi()
            pipe.set(key, started.model_dump_json())
            self._index_running(pipe, started)

        self.client.transaction(apply, key)
        return result[-1]

    def delete(self, job_id: str) -> None:
        """Forget a record and its index entry (no error when already gone)."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(job_id))
            pipe.zrem(self.index, job_id)
            pipe.srem(self.running, job_id)
            pipe.execute()

    def job_ids(self) -> list[str]:
        """Every indexed job id, oldest first."""
        raw = self.client.zrange(self.index, 0, -1)
        return [item.decode() if isinstance(item, bytes) else str(item) for item in raw]

    def running_jobs(self) -> list[Job]:
        """The records of the jobs that are running now (ids gone from the store skipped)."""
        ids = sorted(
            item.decode() if isinstance(item, bytes) else str(item)
            for item in self.client.smembers(self.running)
        )
        if not ids:
            return []
        raws = self.client.mget([self._key(i) for i in ids])
        jobs = [Job.model_validate_json(raw) for raw in raws if raw is not None]
        return [job for job in jobs if job.status is JobStatus.RUNNING]
