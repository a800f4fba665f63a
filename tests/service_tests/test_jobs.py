"""Job records: atomic claims (no double run), retention, and a dispatcher that is down."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from gateway_client import TOKEN, submit
from live_server import serve_app

from model.lab.phantoms.cohort import WrittenCase
from service.app import create_app
from service.deps import ServiceState
from service.retention import purge_expired
from service.settings import Settings
from workers.errors import JobNotFoundError, ServiceUnavailableError
from workers.jobs import FileJobStore, Job, JobFiles, JobStatus, utcnow


@pytest.fixture
def store(tmp_path: Path) -> FileJobStore:
    return FileJobStore(JobFiles(tmp_path))


def test_a_job_is_claimed_once(store: FileJobStore) -> None:
    store.create(Job(job_id="ab12"))
    first = store.claim("ab12", lease_s=60)
    assert first is not None and first.status is JobStatus.RUNNING and first.attempts == 1
    assert store.claim("ab12", lease_s=60) is None  # a second delivery while the first runs


def test_an_expired_lease_is_claimed_again(store: FileJobStore) -> None:
    store.create(Job(job_id="cd34"))
    store.claim("cd34", lease_s=60)
    store.update("cd34", lease_until=utcnow() - timedelta(seconds=1))  # its worker died
    again = store.claim("cd34", lease_s=60)
    assert again is not None and again.attempts == 2


def test_a_finished_job_is_never_claimed(store: FileJobStore) -> None:
    store.create(Job(job_id="ef56", status=JobStatus.SUCCEEDED))
    assert store.claim("ef56", lease_s=60) is None


def test_retention_removes_old_finished_jobs_only(store: FileJobStore) -> None:
    old = utcnow() - timedelta(hours=10)
    store.create(Job(job_id="aa01", status=JobStatus.SUCCEEDED, created_at=old))
    store.create(Job(job_id="aa02", status=JobStatus.QUEUED, created_at=old))
    store.create(Job(job_id="aa03", status=JobStatus.FAILED))
    store.files.input_dir("aa01").mkdir(parents=True)
    assert purge_expired(store, store.files, retention_hours=5) == 1
    assert not store.files.folder("aa01").exists()
    with pytest.raises(JobNotFoundError):
        store.get("aa01")
    assert {j for j in store.job_ids()} == {"aa02", "aa03"}


class _DownDispatcher:
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def describe(self) -> dict[str, object]:
        return {"mode": "down"}

    def submit(self, job_id: str) -> None:
        raise ServiceUnavailableError("the job queue cannot be reached")


def _submit_while_down(tmp_path: Path, case: WrittenCase, jobs: FileJobStore) -> None:
    """Submit ``case`` to a gateway whose queue (and maybe store) is down: 503, still alive."""
    settings = Settings.from_env(api_tokens=[TOKEN], storage_dir=tmp_path, dicom_listener=False)
    state = ServiceState(settings, jobs, jobs.files, _DownDispatcher())
    with serve_app(create_app(settings, state)) as url:
        answer = submit(url, list(case.ct_files), case.clinical.model_dump_json())
        assert answer.status_code == 503
        assert answer.json()["code"] == "service_unavailable"
        assert httpx.get(f"{url}/health").status_code == 200


def test_queue_down_gives_503_and_no_stranded_job(
    tmp_path: Path, phantoms: list[WrittenCase]
) -> None:
    jobs = FileJobStore(JobFiles(tmp_path))
    _submit_while_down(tmp_path, phantoms[0], jobs)
    (job_id,) = jobs.job_ids()
    job = jobs.get(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.code == "service_unavailable"


class _DownStore(FileJobStore):
    """The job store (Redis in production) cannot be reached for a new record."""

    def create(self, job: Job) -> None:
        raise ServiceUnavailableError("the job store cannot be reached")


def test_job_store_down_gives_503_and_leaves_no_files(
    tmp_path: Path, phantoms: list[WrittenCase]
) -> None:
    files = JobFiles(tmp_path)
    _submit_while_down(tmp_path, phantoms[0], _DownStore(files))
    leftovers = [p for p in files.jobs.rglob("*") if p.is_file()] if files.jobs.exists() else []
    assert leftovers == [], "the uploaded series is removed when no job record can be made"
