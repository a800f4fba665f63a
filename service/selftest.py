"""``llmctv selftest``: one generated phantom through the whole service, PASS or FAIL with timings.

What hospitals run after every install or upgrade. In a temporary storage folder it:

1. generates a phantom CT with ground truth (:mod:`model.lab.phantoms`);
2. loads the configured model (as ``llmctv serve`` does at start-up);
3. starts the gateway on a free loopback port with a one-off token, waits for readiness;
4. submits the CT over HTTP, waits for the job, downloads the RTSTRUCT;
5. checks the RTSTRUCT (modality, ROI, study) and its Dice against the phantom's truth.

Nothing outside the temporary folder and the loopback interface is touched.
"""

from __future__ import annotations

import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from model.errors import LlmctvError
from model.settings import with_overrides
from service.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from model.contouring.engine import ContourEngine
    from model.lab.phantoms.cohort import WrittenCase

MIN_DICE = 0.3
"""Dice against the phantom's truth below this fails (the demo model reaches about 0.57)."""


class SelftestError(LlmctvError):
    """One step of the self-test failed (its detail says why)."""

    code = "selftest_failed"


@dataclass
class Step:
    """A step's outcome."""

    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class SelftestReport:
    """Every step, in order."""

    steps: list[Step] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every step passed."""
        return bool(self.steps) and all(s.ok for s in self.steps)

    def lines(self) -> list[str]:
        """What ``llmctv selftest`` prints."""
        out = [
            f"{'PASS' if s.ok else 'FAIL'}  {s.name:<12} {s.seconds:7.2f} s  {s.detail}"
            for s in self.steps
        ]
        total = sum(s.seconds for s in self.steps)
        out.append(f"{'PASS' if self.passed else 'FAIL'}  selftest     {total:7.2f} s")
        return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _served(app: FastAPI, timeout: float = 60.0) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="llmctv-selftest", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SelftestError("the gateway did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class Selftest:
    """The steps, sharing one temporary folder.

    Parameters
    ----------
    settings
        The installation's settings (model, text encoder, device); storage, ports, tokens
        and the DICOM listener are replaced by one-off values.
    load_engine
        Loads the model (default: :func:`workers.preflight.load_engine`).
    """

    def __init__(
        self,
        settings: Settings,
        load_engine: Callable[[Settings], ContourEngine] | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        self.settings = settings
        self.load_engine = load_engine or _default_loader
        self.timeout_s = timeout_s
        self.report = SelftestReport()

    def _step(self, name: str, action: Callable[[], str]) -> bool:
        t0 = time.perf_counter()
        try:
            detail, ok = action(), True
        except (LlmctvError, httpx.HTTPError, OSError) as exc:
            detail, ok = f"{type(exc).__name__}: {exc}", False
        self.report.steps.append(Step(name, ok, time.perf_counter() - t0, detail))
        return ok

    def run(self) -> SelftestReport:
        """Run every step (stopping at the first failure)."""
        with tempfile.TemporaryDirectory(prefix="llmctv-selftest-") as tmp:
            root = Path(tmp)
            found: dict[str, Any] = {}

            def phantom() -> str:
                from model.lab.phantoms import write_cohort

                found["case"] = write_cohort(root / "phantom", 1, "A", seed=7, scale=0.25)[0]
                return f"{len(found['case'].ct_files)} CT slices"

            def model() -> str:
                found["engine"] = self.load_engine(self.settings)
                return f"checkpoint {found['engine'].checkpoint_hash}"

            if self._step("phantom", phantom) and self._step("model", model):
                self._through_gateway(root, found["case"], found["engine"])
        return self.report

    def _through_gateway(self, root: Path, case: WrittenCase, engine: ContourEngine) -> None:
        from service.app import create_app

        token = secrets.token_urlsafe(24)
        settings = with_overrides(
            self.settings,
            {
                "api_tokens": [f"selftest:admin:{token}"],
                "api_tokens_file": None,
                "storage_dir": root / "storage",
                "dicom_listener": False,
                "redis_url": None,
                "storage_min_free_bytes": 1,
            },
        )
        app = create_app(settings, engine=engine)
        with _served(app) as url:
            client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"})
            job: dict[str, Any] = {}
            if self._step("ready", lambda: _wait_ready(client, self.timeout_s)) and self._step(
                "contour", lambda: _contour(client, case, job, self.timeout_s)
            ):
                self._step("rtstruct", lambda: _check_rtstruct(client, case, job, root))
            client.close()


def _default_loader(settings: Settings) -> ContourEngine:
    from workers.preflight import load_engine

    return load_engine(settings.worker)


def _wait_ready(client: httpx.Client, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = client.get("/health/ready")
        if answer.status_code == 200:
            return "all checks pass"
        time.sleep(0.2)
    raise SelftestError(f"not ready: {answer.json().get('detail')}")


def _contour(client: httpx.Client, case: WrittenCase, job: dict[str, Any], timeout_s: float) -> str:
    parts = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in case.ct_files]
    answer = client.post(
        "/contour",
        files=parts,
        data={"clinical": case.clinical.model_dump_json()},
        timeout=120,
    )
    if answer.status_code != 202:
        raise SelftestError(f"POST /contour answered {answer.status_code}: {answer.text[:200]}")
    job_id = answer.json()["job_id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job.update(client.get(f"/jobs/{job_id}").json())
        if job["status"] == "succeeded":
            return f"job {job_id[:8]} " + ", ".join(
                f"{k} {v:.2f} s" for k, v in job.get("timings", {}).items()
            )
        if job["status"] in ("failed", "cancelled"):
            raise SelftestError(f"job {job['status']}: {job.get('error')}")
        time.sleep(0.2)
    raise SelftestError(f"the job did not finish in {timeout_s:.0f} s")


def _check_rtstruct(
    client: httpx.Client, case: WrittenCase, job: dict[str, Any], root: Path
) -> str:
    import pydicom

    from model.dicom.rtstruct.reader import rasterize, read_structure_set
    from model.dicom.series import read_ct_series
    from model.evaluation.metrics import dice

    answer = client.get(f"/jobs/{job['job_id']}/rtstruct", timeout=60)
    if answer.status_code != 200:
        raise SelftestError(f"GET rtstruct answered {answer.status_code}")
    path = root / "rtstruct.dcm"
    path.write_bytes(answer.content)
    ds = pydicom.dcmread(path)
    ct = read_ct_series(list(case.ct_files))
    if ds.Modality != "RTSTRUCT" or ds.StudyInstanceUID != ct.study_instance_uid:
        raise SelftestError("the RTSTRUCT does not reference the phantom's study")
    roi = str(ds.StructureSetROISequence[0].ROIName)
    predicted = rasterize(read_structure_set(path), roi, ct.volume.grid)
    truth = rasterize(read_structure_set(case.rtstruct), "CTV", ct.volume.grid)
    score = float(dice(predicted, truth))
    if score < MIN_DICE:
        raise SelftestError(f"Dice {score:.3f} against the phantom's truth is below {MIN_DICE}")
    return f"ROI {roi!r}, Dice {score:.3f} against the phantom's truth"
