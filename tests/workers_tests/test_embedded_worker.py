"""The embedded worker: cancel, time limit, bounded stop, dead letters, and what it reports.

A fake engine stands in for the network: it sleeps through its "windows" and reports progress
after each one, as the sliding window does, so the tests take seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from factories import CtSpec, write_ct_series
from gateway_client import AUTH, TOKEN, submit
from live_server import serve_app

from model.contouring.engine import EngineResult
from model.imaging.geometry import Grid, Volume
from service.app import create_app
from service.deps import ServiceState
from service.settings import Settings
from workers.dispatch import EmbeddedDispatcher
from workers.jobs import FileJobStore, Job, JobFiles, JobStatus
from workers.pipeline import run_job
from workers.settings import WorkerSettings

CLINICAL = {
    "diagnoses": [{"side": "left", "surgery": "breast_conserving", "t_stage": "2", "n_stage": "0"}]
}


class FakeEngine:
    """Takes ``steps`` windows of ``step_s`` seconds each; contours a box in the middle."""

    checkpoint_hash = "fake"
    multimodal = False
    has_structures = False

    def __init__(self, steps: int = 10, step_s: float = 0.01, windows: int = 4) -> None:
        self.steps, self.step_s, self.windows = steps, step_s, windows
        self.started = 0

    def window_count(self, grid: Grid) -> int:
        return self.windows

    def check_note(self, note: str) -> None:
        """Notes of any length pass."""

    def contour(self, volume: Volume, note: str, progress: Any) -> EngineResult:
        self.started += 1
        for n in range(self.steps):
            time.sleep(self.step_s)
            if progress is not None:
                progress((n + 1) / self.steps)
        mask = np.zeros(volume.array.shape, bool)
        k, j, i = (s // 2 for s in mask.shape)
        mask[k - 1 : k + 2, j - 2 : j + 2, i - 2 : i + 2] = True
        return EngineResult(mask, {"network": self.steps * self.step_s}, self.steps)

    def contour_record(self, volume: Volume, record: Any, progress: Any) -> EngineResult:
        return self.contour(volume, record.prompt_text(), progress)


def _settings(tmp_path: Path, **extra: Any) -> WorkerSettings:
    return WorkerSettings.from_env(storage_dir=tmp_path, **extra)


def _stored_job(files: JobFiles, store: FileJobStore, tmp_path: Path, job_id: str) -> str:
    write_ct_series(files.input_dir(job_id), CtSpec(n_slices=6, rows=16, columns=16))
    store.create(Job(job_id=job_id, clinical=CLINICAL))
    return job_id


def _wait(store: FileJobStore, job_id: str, check: Any, timeout: float = 20.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if check(job):
            return job
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id}: {store.get(job_id)}")


@pytest.fixture
def backend(tmp_path: Path) -> tuple[JobFiles, FileJobStore]:
    files = JobFiles(tmp_path)
    return files, FileJobStore(files)


def test_a_fake_job_succeeds(tmp_path: Path, backend: tuple[JobFiles, FileJobStore]) -> None:
    files, store = backend
    job_id = _stored_job(files, store, tmp_path, "aa01")
    run_job(job_id, store, files, FakeEngine(), _settings(tmp_path))  # type: ignore[arg-type]
    assert store.get(job_id).status is JobStatus.SUCCEEDED


def test_a_job_past_its_time_limit_fails_with_job_timeout(
    tmp_path: Path, backend: tuple[JobFiles, FileJobStore]
) -> None:
    files, store = backend
    job_id = _stored_job(files, store, tmp_path, "aa02")
    engine = FakeEngine(steps=1000, step_s=0.01)  # 10 s of windows
    t0 = time.monotonic()
    run_job(job_id, store, files, engine, _settings(tmp_path, task_soft_time_limit=0.5))  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 3.0
    job = store.get(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.code == "job_timeout"


def test_too_many_windows_fail_before_the_network_runs(
    tmp_path: Path, backend: tuple[JobFiles, FileJobStore]
) -> None:
    files, store = backend
    job_id = _stored_job(files, store, tmp_path, "aa03")
    engine = FakeEngine(windows=5000)
    run_job(job_id, store, files, engine, _settings(tmp_path, ingest_max_windows=2000))  # type: ignore[arg-type]
    job = store.get(job_id)
    assert job.error is not None and job.error.code == "implausible_geometry"
    assert engine.started == 0


def test_a_job_started_too_often_is_a_dead_letter(
    tmp_path: Path, backend: tuple[JobFiles, FileJobStore]
) -> None:
    """Each restart re-queues a running job; after job_max_attempts starts it fails."""
    files, store = backend
    job_id = _stored_job(files, store, tmp_path, "aa04")
    store.update(job_id, status=JobStatus.RUNNING, attempts=2)  # two starts that never ended
    engine = FakeEngine()
    run_job(job_id, store, files, engine, _settings(tmp_path, job_max_attempts=2))  # type: ignore[arg-type]
    job = store.get(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.code == "job_attempts_exhausted"
    assert engine.started == 0


@pytest.fixture
def slow_dispatcher(
    tmp_path: Path, backend: tuple[JobFiles, FileJobStore]
) -> Iterator[EmbeddedDispatcher]:
    files, store = backend
    engine = FakeEngine(steps=3000, step_s=0.01)  # 30 s: far longer than any test waits
    dispatcher = EmbeddedDispatcher(
        _settings(tmp_path, task_soft_time_limit=600.0, worker_stop_timeout=5.0),
        store,
        files,
        engine_factory=lambda _: engine,  # type: ignore[arg-type,return-value]
    )
    dispatcher.start()
    yield dispatcher
    dispatcher.stop()


def test_stop_requeues_the_running_job_within_seconds(
    tmp_path: Path, backend: tuple[JobFiles, FileJobStore], slow_dispatcher: EmbeddedDispatcher
) -> None:
    files, store = backend
    job_id = _stored_job(files, store, tmp_path, "bb01")
    slow_dispatcher.submit(job_id)
    _wait(store, job_id, lambda j: j.progress > 0)
    t0 = time.monotonic()
    slow_dispatcher.stop()
    stopped_in = time.monotonic() - t0
    assert stopped_in < 2.0, stopped_in
    job = store.get(job_id)
    assert job.status is JobStatus.QUEUED  # runs again at the next start
    assert job.attempts == 0  # a graceful hand-back is not an attempt


def test_describe_reports_the_running_job(
    tmp_path: Path, backend: tuple[JobFiles, FileJobStore], slow_dispatcher: EmbeddedDispatcher
) -> None:
    files, store = backend
    idle = slow_dispatcher.describe()
    assert idle["running_job"] is False and idle["running_job_age_s"] is None
    job_id = _stored_job(files, store, tmp_path, "bb02")
    slow_dispatcher.submit(job_id)
    _wait(store, job_id, lambda j: j.progress > 0)
    time.sleep(0.3)
    facts = slow_dispatcher.describe()
    assert facts["running_job"] is True and facts["worker_alive"] is True
    assert isinstance(facts["running_job_age_s"], float) and facts["running_job_age_s"] >= 0.3
    assert isinstance(facts["last_progress_age_s"], float) and facts["last_progress_age_s"] < 1.0
    assert "job_id" not in json.dumps(facts)


# --- over HTTP: DELETE /jobs/{id} -------------------------------------------------------------
@pytest.fixture
def gateway_with_slow_worker(tmp_path: Path) -> Iterator[tuple[str, FileJobStore]]:
    settings = Settings.from_env(api_tokens=[TOKEN], storage_dir=tmp_path, dicom_listener=False)
    files = JobFiles(tmp_path)
    store = FileJobStore(files)
    engine = FakeEngine(steps=3000, step_s=0.01)
    dispatcher = EmbeddedDispatcher(
        settings.worker,
        store,
        files,
        engine_factory=lambda _: engine,  # type: ignore[arg-type,return-value]
    )
    with serve_app(create_app(settings, ServiceState(settings, store, files, dispatcher))) as url:
        yield url, store


def _series(tmp_path: Path, name: str) -> list[Path]:
    return write_ct_series(tmp_path / name, CtSpec(n_slices=6, rows=16, columns=16))


def test_cancel_a_running_and_a_queued_job(
    tmp_path: Path, gateway_with_slow_worker: tuple[str, FileJobStore]
) -> None:
    url, store = gateway_with_slow_worker
    clinical = json.dumps(CLINICAL)
    running = submit(url, _series(tmp_path, "a"), clinical).json()["job_id"]
    queued = submit(url, _series(tmp_path, "b"), clinical).json()["job_id"]
    _wait(store, running, lambda j: j.progress > 0)

    answer = httpx.delete(f"{url}/jobs/{queued}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"

    t0 = time.monotonic()
    answer = httpx.delete(f"{url}/jobs/{running}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    job = _wait(store, running, lambda j: j.lease_until is None)  # the worker let go
    assert time.monotonic() - t0 < 3.0
    assert job.status is JobStatus.CANCELLED and job.progress < 0.5
    assert job.error is not None and job.error.code == "job_cancelled"
    time.sleep(0.5)
    assert store.get(queued).status is JobStatus.CANCELLED
    assert store.get(queued).started_at is None  # never started

    again = httpx.delete(f"{url}/jobs/{running}", headers=AUTH)
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert again.json()["code"] == "job_finished"
    result = httpx.get(f"{url}/jobs/{running}/rtstruct", headers=AUTH)
    assert result.status_code == 409
    assert httpx.delete(f"{url}/jobs/{'0' * 32}", headers=AUTH).status_code == 404
    assert httpx.delete(f"{url}/jobs/{running}").status_code == 401
