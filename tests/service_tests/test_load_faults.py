"""Load and faults: 50 concurrent submissions, storage turned read-only mid-job, Redis down 30 s.

The embedded cases use the fast :class:`fake_engine.FakeEngine` (the service around the model
is under test, not the network). The read-only storage is a small tmpfs mounted on the
storage folder and remounted ``ro`` mid-job (root only: as root, file permissions would not
stop a write; skipped where mounting is not allowed). The Redis case uses a real
``redis-server``, a real ``llmctv worker`` and the demo model.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from endpoint_probe import EndpointProbe
from fake_engine import FakeEngine
from gateway_client import AUTH, TOKEN, submit, wait_finished
from live_server import serve_app
from redis_server import needs_redis, running_redis
from worker_process import running_worker, worker_env

from model.lab.phantoms.cohort import WrittenCase
from service.app import create_app
from service.settings import Settings


def _report(name: str, measured: dict[str, Any]) -> None:
    """Print what a test measured (shown with ``pytest -s``; quoted in the README)."""
    print(f"\nload and fault measurements, {name}:", json.dumps(measured, indent=1))


def _settings(storage: Path, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "api_tokens": [TOKEN],
        "storage_dir": storage,
        "dicom_listener": False,
        "storage_min_free_bytes": 1,
    }
    return Settings.from_env(**{**values, **changes})


def ready_status(url: str) -> int:
    return httpx.get(f"{url}/health/ready", timeout=5).status_code


def wait_ready(url: str, want: int, timeout: float = 60.0) -> float:
    """Seconds until ``/health/ready`` answers ``want``."""
    t0 = time.monotonic()
    while ready_status(url) != want:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"/health/ready did not turn {want} in {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - t0


def test_fifty_concurrent_submissions_all_finish(
    tmp_path: Path, phantoms: list[WrittenCase]
) -> None:
    case = phantoms[0]
    clinical = case.clinical.model_dump_json()
    app = create_app(_settings(tmp_path / "storage"), engine=FakeEngine())
    with serve_app(app) as url, EndpointProbe(url, "/health/ready") as probe:
        wait_ready(url, 200)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(50) as pool:
            answers = list(
                pool.map(lambda _: submit(url, list(case.ct_files), clinical), range(50))
            )
        accepted_s = time.perf_counter() - t0
        assert [a.status_code for a in answers] == [202] * 50
        results = [wait_finished(url, a.json()["job_id"], timeout=600) for a in answers]
        wall = time.perf_counter() - t0
    assert [r["status"] for r in results] == ["succeeded"] * 50
    assert all(r["attempts"] == 1 for r in results)
    assert probe.seen and all(s == 200 for _, s in probe.seen), "ready throughout"
    _report(
        "fifty",
        {
            "accepted": 50,
            "finished": len(results),
            "all_accepted_s": round(accepted_s, 1),
            "wall_s": round(wall, 1),
            "ready_slowest_ms": round(1000 * probe.slowest, 1),
        },
    )


@contextmanager
def tmpfs(folder: Path) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def remount(folder: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_storage_turned_read_only_mid_job(tmp_path: Path, phantoms: list[WrittenCase]) -> None:
    case = phantoms[0]
    gate = threading.Event()
    with tmpfs(tmp_path / "storage") as storage:
        app = create_app(_settings(storage), engine=FakeEngine(gate=gate))
        with serve_app(app) as url:
            wait_ready(url, 200)
            job_id = submit(url, list(case.ct_files), case.clinical.model_dump_json()).json()
            job_id = job_id["job_id"]
            while httpx.get(f"{url}/jobs/{job_id}", headers=AUTH).json()["status"] != "running":
                time.sleep(0.05)
            remount(storage, "ro")
            try:
                gate.set()  # the job goes on: its next write meets the read-only folder
                status = wait_finished(url, job_id, timeout=60)
                not_ready_after = wait_ready(url, 503)
                refused = submit(url, list(case.ct_files), case.clinical.model_dump_json())
            finally:
                remount(storage, "rw")
            ready_again = wait_ready(url, 200)
            stored = json.loads((storage / "jobs" / job_id / "job.json").read_text())
            left = sorted(p.name for p in (storage / "jobs" / job_id).iterdir())
            after = submit(url, list(case.ct_files), case.clinical.model_dump_json()).json()
            after_status = wait_finished(url, after["job_id"])["status"]
    assert status["status"] == "failed"
    assert status["error"]["code"] == "storage_unavailable"
    assert refused.status_code == 503 and refused.json()["code"] == "storage_unavailable"
    assert stored["status"] == "failed" and stored["error"]["code"] == "storage_unavailable"
    assert left == ["input", "job.json"], "no RTSTRUCT, preview or temporary file"
    assert after_status == "succeeded"
    _report(
        "read_only",
        {
            "job": f"failed [{status['error']['code']}]",
            "submission_while_read_only": f"{refused.status_code} [{refused.json()['code']}]",
            "not_ready_after_s": round(not_ready_after, 2),
            "ready_again_after_s": round(ready_again, 2),
            "next_job": after_status,
        },
    )


def _job(url: str, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/jobs/{job_id}", headers=AUTH, timeout=30).json()
    return body


@needs_redis
def test_redis_down_for_30_seconds_loses_no_job(
    tmp_path: Path, phantoms: list[WrittenCase]
) -> None:
    case = phantoms[1]
    clinical = case.clinical.model_dump_json()
    with running_redis(tmp_path / "redis", persistent=True) as server:
        settings = _settings(tmp_path / "store", redis_url=server.url)
        with serve_app(create_app(settings)) as url:
            # Time limits above the outage, as in production (600 / 900 s): the task of the
            # interrupted job waits for Redis, then queues its job again.
            env = worker_env(
                server.url,
                tmp_path / "store",
                task_soft_time_limit=60,
                task_hard_time_limit=70,
                visibility_timeout=80,
                job_stall_timeout=60,
            )
            with running_worker(env, tmp_path, server.client()):
                wait_ready(url, 200, timeout=120)
                ids = [
                    submit(url, list(case.ct_files), clinical).json()["job_id"] for _ in range(3)
                ]
                while _job(url, ids[0])["status"] == "queued":
                    time.sleep(0.05)
                with EndpointProbe(url, "/health/ready") as probe:
                    server.stop()
                    down_at = time.monotonic()
                    turned_503 = wait_ready(url, 503)
                    during = submit(url, list(case.ct_files), clinical)
                    time.sleep(max(0.0, 30.0 - (time.monotonic() - down_at)))
                    server.start()
                    back = wait_ready(url, 200, timeout=120)
                results = [wait_finished(url, j, timeout=300) for j in ids]
    assert during.status_code == 503 and during.json()["code"] == "service_unavailable"
    assert [r["status"] for r in results] == ["succeeded"] * 3, [
        (r["status"], r["attempts"], r["error"]) for r in results
    ]
    assert probe.slowest < 1.0, "readiness answered fast while Redis was down"
    _report(
        "redis_down",
        {
            "down_s": 30,
            "ready_503_after_s": round(turned_503, 2),
            "ready_503_for_s": round(probe.not_ready_seconds(), 1),
            "ready_200_after_restart_s": round(back, 1),
            "submission_while_down": f"{during.status_code} [{during.json()['code']}]",
            "jobs_submitted_before": len(ids),
            "jobs_succeeded": sum(r["status"] == "succeeded" for r in results),
            "attempts": [r["attempts"] for r in results],
            "ready_slowest_ms": round(1000 * probe.slowest, 1),
        },
    )
