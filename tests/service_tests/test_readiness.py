"""Readiness: /health/ready with and without a loadable model, the watermark, start-up checks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_engine import FakeEngine
from gateway_client import wait_ready_state
from live_server import free_port, serve_app

from service.app import create_app
from service.selftest import Selftest
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
TOKEN = "ready-test-token-000000"


def _settings(tmp_path: Path, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "api_tokens": [TOKEN],
        "storage_dir": tmp_path / "storage",
        "dicom_listener": False,
        "storage_min_free_bytes": 1,
    }
    return Settings.from_env(**{**values, **changes})


def test_ready_with_a_loaded_model(tmp_path: Path) -> None:
    with serve_app(create_app(_settings(tmp_path), engine=FakeEngine())) as url:
        body = wait_ready_state(url, 200)
        assert {c["name"]: c["ok"] for c in body["checks"]} == {
            "model": True,
            "storage": True,
            "destinations": True,
        }
        assert httpx.get(f"{url}/health/live").json()["status"] == "ok"
        assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_not_ready_without_a_loadable_model(tmp_path: Path) -> None:
    empty = tmp_path / "no-checkpoint"
    empty.mkdir()
    with serve_app(create_app(_settings(tmp_path, checkpoint=empty))) as url:
        deadline = time.monotonic() + 60
        body = wait_ready_state(url, 503)
        while "model_not_found" not in str(body["checks"]) and time.monotonic() < deadline:
            time.sleep(0.1)  # first "the model is loading", then the loader's verdict
            body = wait_ready_state(url, 503)
        assert body["code"] == "not_ready"
        assert body["failing"] == ["model"]
        model = next(c for c in body["checks"] if c["name"] == "model")
        assert "[model_not_found]" in model["detail"]
        assert httpx.get(f"{url}/health").status_code == 200  # alive, not ready


def test_not_ready_below_the_free_space_watermark(tmp_path: Path) -> None:
    settings = _settings(tmp_path, storage_min_free_bytes=10**18)
    with serve_app(create_app(settings, engine=FakeEngine())) as url:
        body = wait_ready_state(url, 503)
        assert body["failing"] == ["storage"]
        assert "watermark" in body["detail"] + str(body["checks"])


def test_dicom_listener_bound_is_a_check(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, dicom_listener=True, dicom_host="127.0.0.1", dicom_port=free_port()
    )
    with serve_app(create_app(settings, engine=FakeEngine())) as url:
        body = wait_ready_state(url, 200)
        listener = {"name": "dicom_listener", "ok": True, "detail": "bound, 0 association(s) open"}
        assert listener in body["checks"]


def test_invalid_destinations_make_it_not_ready(tmp_path: Path) -> None:
    settings = _settings(tmp_path, dicom_destinations=["TPS=no-port-here"])
    with serve_app(create_app(settings, engine=FakeEngine())) as url:
        body = wait_ready_state(url, 503)
        assert body["failing"] == ["destinations"]


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMCTV_")}
    env.update(
        OMP_NUM_THREADS="1",
        LLMCTV_API_TOKENS=TOKEN,
        LLMCTV_STORAGE_DIR=str(tmp_path / "storage"),
        LLMCTV_DICOM_LISTENER="false",
        LLMCTV_PORT=str(free_port()),
    )
    env.update({f"LLMCTV_{k.upper()}": v for k, v in settings.items()})
    return env


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_start_up_exits_with_code_and_fix_when_the_text_encoder_is_missing(
    tmp_path: Path, command: str
) -> None:
    env = _env(tmp_path, text_encoder=str(tmp_path / "no-such-encoder"))
    if command == "worker":
        env["LLMCTV_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    done = subprocess.run(
        [sys.executable, "-m", "service", command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cannot start [model_not_found]" in done.stderr
    assert "fix: install the demo model wheels" in done.stderr


def test_selftest_reports_pass_with_timings(tmp_path: Path) -> None:
    report = Selftest(_settings(tmp_path), load_engine=lambda _: FakeEngine()).run()  # type: ignore[arg-type,return-value]
    names = [s.name for s in report.steps]
    assert names == ["phantom", "model", "ready", "contour", "rtstruct"], report.lines()
    # The fake engine's box is not the phantom's CTV: the Dice step must catch it.
    assert not report.steps[-1].ok and "Dice" in report.steps[-1].detail
    assert report.lines()[-1].startswith("FAIL  selftest")
    assert all(s.ok for s in report.steps[:-1])
