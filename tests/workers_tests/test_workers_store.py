"""Job records in a real Redis: atomic updates, the id index, retention in Celery mode."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from billiard.exceptions import TimeLimitExceeded
from gateway_client import AUTH, TOKEN
from live_server import free_port, serve_app
from redis_server import RedisServer, needs_redis, running_redis

from service.app import create_app
from service.retention import purge_expired
from service.settings import Settings
from workers.celery_app import create_celery_app
from workers.celery_dispatch import CeleryDispatcher
from workers.cli import check_worker
from workers.errors import JobNotFoundError, ServiceUnavailableError
from workers.facts import WorkerFacts, publish
from workers.jobs import Job, JobFiles, JobStatus, new_job_id, utcnow
from workers.pipeline import progress_writer
from workers.redis_store import RedisJobStore, connect
from workers.runtime import fail_unfinished
from workers.settings import WorkerSettings

pytestmark = needs_redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def store(redis_server: RedisServer) -> RedisJobStore:
    client = connect(redis_server.url)
    client.flushdb()
    return RedisJobStore(client)


def _job(**fields: object) -> Job:
    return Job.model_validate({"job_id": new_job_id(), **fields})


def test_records_round_trip_and_are_indexed(store: RedisJobStore) -> None:
    first, second = _job(clinical={"n": 1}), _job(attempts=2)
    store.create(first)
    store.create(second)
    assert store.get(first.job_id) == first
    assert set(store.job_ids()) == {first.job_id, second.job_id}
    updated = store.update(first.job_id, status=JobStatus.RUNNING, progress=0.5)
    assert updated.status is JobStatus.RUNNING and updated.clinical == {"n": 1}
    assert store.get(first.job_id) == updated
    store.delete(first.job_id)
    store.delete(first.job_id)  # no error the second time
    assert store.job_ids() == [second.job_id]
    with pytest.raises(JobNotFoundError):
        store.get(first.job_id)


def test_update_never_resurrects_a_deleted_record(store: RedisJobStore) -> None:
    job = _job()
    store.create(job)
    store.delete(job.job_id)
    with pytest.raises(JobNotFoundError):
        store.update(job.job_id, progress=0.3)
    assert store.job_ids() == [] and store.client.keys("llmctv:job:*") == []


def test_ids_that_are_not_job_ids_are_not_found(store: RedisJobStore) -> None:
    with pytest.raises(JobNotFoundError):
        store.get("../../etc")
    with pytest.raises(JobNotFoundError):
        store.update("*", progress=1.0)


def test_a_write_between_read_and_write_is_not_overwritten(
    redis_server: RedisServer, store: RedisJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process fails the job while this update is between its read and its write."""
    job = _job(status=JobStatus.RUNNING)
    store.create(job)
    other = RedisJobStore(connect(redis_server.url))
    original = Job.model_validate_json
    interfered: list[bool] = []

    def read_then_interfere(raw: str | bytes) -> Job:
        record = original(raw)
        if not interfered:
            interfered.append(True)
            other.update(job.job_id, status=JobStatus.FAILED)
        return record

    monkeypatch.setattr(Job, "model_validate_json", read_then_interfere)
    store.update(job.job_id, progress=0.4)
    monkeypatch.undo()
    final = store.get(job.job_id)
    assert final.status is JobStatus.FAILED, "the concurrent status change was lost"
    assert final.progress == 0.4


def test_concurrent_writers_never_move_each_others_fields_back(
    redis_server: RedisServer, store: RedisJobStore
) -> None:
    job = _job()
    store.create(job)
    other = RedisJobStore(connect(redis_server.url))
    went_back: list[str] = []

    def progress() -> None:
        for i in range(1, 101):
            store.update(job.job_id, progress=i / 100)
            if store.get(job.job_id).progress < i / 100:
                went_back.append("progress")

    def attempts() -> None:
        for i in range(1, 101):
            other.update(job.job_id, attempts=i)
            if other.get(job.job_id).attempts < i:
                went_back.append("attempts")

    threads = [threading.Thread(target=progress), threading.Thread(target=attempts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.get(job.job_id)
    assert went_back == [] and (final.progress, final.attempts) == (1.0, 100)


def test_progress_written_by_the_pipeline_is_visible(store: RedisJobStore) -> None:
    job = _job(status=JobStatus.RUNNING)
    store.create(job)
    report = progress_writer(store, job.job_id, 0.5, 0.5)
    report(0.5)
    assert store.get(job.job_id).progress == 0.75


def test_retention_purges_old_finished_jobs_records_and_files(
    store: RedisJobStore, tmp_path: Path
) -> None:
    files = JobFiles(tmp_path)
    old = utcnow() - timedelta(hours=200)
    expired = _job(status=JobStatus.SUCCEEDED, created_at=old)
    running = _job(status=JobStatus.RUNNING, created_at=old)
    recent = _job(status=JobStatus.FAILED)
    for job in (expired, running, recent):
        store.create(job)
        files.input_dir(job.job_id).mkdir(parents=True)
    assert purge_expired(store, files, retention_hours=168) == 1
    assert set(store.job_ids()) == {running.job_id, recent.job_id}
    assert not files.folder(expired.job_id).exists()
    assert files.folder(running.job_id).exists() and files.folder(recent.job_id).exists()


def _health_once_refreshed(url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        health: dict[str, Any] = httpx.get(f"{url}/health", timeout=10).json()
        if health["dispatcher"]["broker"] != "unknown" or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def test_gateway_in_celery_mode_keeps_records_in_redis_and_purges_them(
    redis_server: RedisServer, store: RedisJobStore, tmp_path: Path
) -> None:
    """LLMCTV_REDIS_URL set: records in Redis, retention runs at start-up, /health answers."""
    expired = _job(status=JobStatus.SUCCEEDED, created_at=utcnow() - timedelta(hours=9))
    store.create(expired)
    settings = Settings.from_env(
        redis_url=redis_server.url,
        api_tokens=[TOKEN],
        storage_dir=tmp_path,
        job_retention_hours=8,
        dicom_listener=False,
    )
    app = create_app(settings)
    assert isinstance(app.state.llmctv.dispatcher, CeleryDispatcher)
    kept = _job()
    store.create(kept)
    with serve_app(app) as url:
        health = _health_once_refreshed(url)
        status = httpx.get(f"{url}/jobs/{kept.job_id}", headers=AUTH, timeout=10)
        gone = httpx.get(f"{url}/jobs/{expired.job_id}", headers=AUTH, timeout=10)
    assert health["dispatcher"]["mode"] == "celery" and health["dispatcher"]["broker"] == "ok"
    assert health["dispatcher"]["queued"] == {"contour": 0, "text": 0}
    assert status.status_code == 200 and status.json()["status"] == "queued"
    assert gone.status_code == 404, "retention ran against the Redis store"
    assert expired.job_id not in store.job_ids()


def test_health_answers_at_once_while_redis_hangs(tmp_path: Path) -> None:
    """A Redis that accepts connections but never answers must not slow down GET /health."""
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        url = f"redis://127.0.0.1:{black_hole.getsockname()[1]}/0"
        settings = WorkerSettings.from_env(redis_url=url, storage_dir=tmp_path)
        hanging = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        dispatcher = CeleryDispatcher(settings, create_celery_app(settings), hanging)
        t0 = time.perf_counter()
        dispatcher.start()
        facts = dispatcher.describe()
        elapsed = time.perf_counter() - t0
        dispatcher.stop()
    assert elapsed < 0.05 and facts["mode"] == "celery" and facts["broker"] == "unknown"


def test_submit_without_a_broker_is_service_unavailable(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    settings = WorkerSettings.from_env(redis_url=url, storage_dir=tmp_path)
    dispatcher = CeleryDispatcher(settings, create_celery_app(settings), connect(url))
    with pytest.raises(ServiceUnavailableError):
        dispatcher.submit(new_job_id())


def test_a_job_past_the_hard_time_limit_fails_with_job_timeout(store: RedisJobStore) -> None:
    running, done = _job(status=JobStatus.RUNNING), _job(status=JobStatus.SUCCEEDED)
    for job in (running, done):
        store.create(job)
        fail_unfinished(store, job.job_id, TimeLimitExceeded(18.0))
    failed = store.get(running.job_id)
    assert failed.status is JobStatus.FAILED and failed.error is not None
    assert failed.error.code == "job_timeout" and failed.finished_at is not None
    assert store.get(done.job_id).status is JobStatus.SUCCEEDED, "a finished job is left alone"


def test_worker_health_check_needs_a_loaded_model_and_a_heartbeat(
    redis_server: RedisServer, store: RedisJobStore
) -> None:
    settings = WorkerSettings.from_env(redis_url=redis_server.url)
    node = "llmctv-text@host-a"
    assert check_worker(settings, node) == 1, "no worker yet"
    loaded = WorkerFacts(node=node, pid=7, queues=["contour", "text"], text_encoder=True)
    publish(store.client, loaded)
    assert check_worker(settings, node) == 0
    assert check_worker(settings, "llmctv-text@host-b") == 1, "another host's worker"
    broken = WorkerFacts(node=node, pid=8, queues=["contour"], text_encoder=False)
    broken.model_error = "model_not_found"
    publish(store.client, broken)
    assert check_worker(settings, node) == 1
