"""HTTP helpers for gateway tests: submit a CT series, poll a job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def dicom_parts(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart ``files`` parts for ``paths``."""
    return [("files", (p.name, p.read_bytes(), "application/dicom")) for p in sorted(paths)]


def submit(
    url: str,
    paths: list[Path],
    clinical: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, str] | None = None,
) -> httpx.Response:
    """``POST /contour`` with the files as ``files`` parts."""
    return httpx.post(
        f"{url}/contour",
        files=dicom_parts(paths),
        data={"clinical": clinical, **(extra or {})},
        headers=AUTH if headers is None else headers,
        timeout=120,
    )


def wait_finished(url: str, job_id: str, timeout: float = 180.0) -> dict[str, Any]:
    """Poll ``GET /jobs/{id}`` until the job succeeded or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = httpx.get(f"{url}/jobs/{job_id}", headers=AUTH, timeout=30).json()
        if body["status"] in ("succeeded", "failed"):
            return body
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


def wait_ready_state(url: str, want: int, timeout: float = 60.0) -> dict[str, Any]:
    """Poll ``/health/ready`` until it answers ``want``; its body."""
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(f"{url}/health/ready", timeout=5)
        if answer.status_code == want:
            body: dict[str, Any] = answer.json()
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/health/ready stayed {answer.status_code}: {answer.text}")
        time.sleep(0.1)
