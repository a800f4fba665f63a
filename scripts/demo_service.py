"""The service half of the demo: run ``llmctv serve`` and contour a phantom over HTTP."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from model.dicom.rtstruct.reader import rasterize, read_structure_set
from model.dicom.series import read_ct_series
from model.evaluation.metrics import dice


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_service(
    storage: Path, checkpoint: Path, models_dir: Path | None = None
) -> Iterator[tuple[str, str]]:
    """``llmctv serve`` as a child process on a free loopback port; yields (URL, token).

    With ``models_dir`` it serves that models folder's promoted version (``LLMCTV_MODELS_DIR``)
    instead of ``checkpoint``. The token is an administrator's.
    """
    token = secrets.token_urlsafe(24)
    port = _free_port()
    env = {
        "LLMCTV_API_TOKENS": token,
        "LLMCTV_DICOM_LISTENER": "false",
        "PATH": "/usr/bin:/bin",
    }
    command = [sys.executable, "-m", "service", "serve", "--port", str(port)]
    command += ["--storage-dir", str(storage)]
    if models_dir is None:
        command += ["--checkpoint", str(checkpoint)]
    else:
        env["LLMCTV_MODELS_DIR"] = str(models_dir)
    command += ["--log-level", "warning"]
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("llmctv serve did not start") from None
                time.sleep(0.3)
        yield url, token
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait(url: str, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    while True:
        status: dict[str, Any] = httpx.get(f"{url}/jobs/{job_id}", headers=headers).json()
        if status["status"] in ("succeeded", "failed"):
            return status
        time.sleep(0.3)


def contour_over_http(
    url: str, token: str, case: Path, clinical: dict[str, Any], out: Path, label: str
) -> str:
    """Submit one phantom, wait, save RTSTRUCT and preview; a line with Dice and warnings."""
    import json

    headers = {"Authorization": f"Bearer {token}"}
    ct_files = sorted((case / "ct").iterdir())
    parts = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in ct_files]
    t0 = time.perf_counter()
    answer = httpx.post(
        f"{url}/contour",
        files=parts,
        data={"clinical": json.dumps(clinical)},
        headers=headers,
        timeout=120,
    )
    answer.raise_for_status()
    links = answer.json()
    status = _wait(url, headers, links["job_id"])
    seconds = time.perf_counter() - t0
    if status["status"] != "succeeded":
        return f"job failed: {status['error']}"
    stem = out / f"{case.name}-{label.replace(' ', '-')}"
    rtstruct = stem.with_suffix(".rtstruct.dcm")
    rtstruct.write_bytes(httpx.get(url + links["rtstruct_url"], headers=headers).content)
    stem.with_suffix(".preview.png").write_bytes(
        httpx.get(url + links["preview_url"], headers=headers).content
    )
    grid = read_ct_series(ct_files).volume.grid
    predicted = rasterize(read_structure_set(rtstruct), "CTV", grid)
    sides = ", ".join(d["side"] for d in clinical["diagnoses"])
    line = f"note side(s) {sides}: job {seconds:.1f} s, {rtstruct.name}"
    if label == "as written":
        truth = rasterize(read_structure_set(case / "rtstruct.dcm"), "CTV", grid)
        line += f", Dice vs ground truth {dice(predicted, truth):.3f}"
    for warning in status["warnings"]:
        line += f"\n      warning: {warning}"
    return line
