"""The clinical DICOM flow end to end, inside ``unshare -n`` (Orthanc listens on all interfaces).

PACS (dcmtk ``storescu``) -> our listener -> order -> job -> RTSTRUCT -> C-STORE to a planning
system (a real Orthanc), checked through Orthanc's REST API; then a study-first order whose
destination is down (the failure and a retry are visible in ``GET /orders/{id}``).

Prints one JSON report on the last line of stdout; ``tests/service_tests/test_orders.py``
asserts on it.
Usage: ``unshare -n python tests/pacs_scenario.py --workdir DIR``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import httpx  # noqa: E402
from gateway_client import AUTH, TOKEN  # noqa: E402
from live_server import free_port, serve_app  # noqa: E402
from orthanc_scenario import ORTHANC_AET, _get, _stop, _wait_for_rest, _write_config  # noqa: E402

from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402

LUNG1_CT = TESTS.parents[1] / "shared" / "data" / "lung1_ct_rtstruct" / "LUNG1-001" / "image"
STUDY = "1.3.6.1.4.1.32722.99.99.239341353911714368772597187099978969331"
ACCESSION = "2819497684894126"
CLINICAL = {
    "diagnoses": [{"side": "right", "surgery": "breast_conserving", "t_stage": "2", "n_stage": "0"}]
}


def _settings(workdir: Path, orthanc_port: int) -> Settings:
    return Settings.from_env(
        api_tokens=[TOKEN],
        storage_dir=workdir / "llmctv",
        dicom_listener=True,
        dicom_host="127.0.0.1",
        dicom_port=free_port(),
        dicom_ae_title="LLMCTV",
        dicom_allowed_aets=["PACS"],
        dicom_series_timeout_s=1.0,
        dicom_destinations=[
            f"TPS={ORTHANC_AET}@127.0.0.1:{orthanc_port}",
            f"DOWN=NOBODY@127.0.0.1:{free_port()}",
        ],
        dicom_send_retries=1,
        dicom_send_backoff_s=0.2,
        nodal_check_cc=0.0,
        # LUNG1 is a man's lung-cancer CT: the breast note's structures need attention and would
        # be held for a reviewer (tested in test_plausibility.py); this scenario is the data path.
        hold_needs_attention=False,
    )


def _echo(port: int, calling: str) -> int:
    command = ["echoscu", "-aet", calling, "-aec", "LLMCTV", "127.0.0.1", str(port)]
    return subprocess.run(command, capture_output=True, timeout=30).returncode


def _wait_order(url: str, order_id: str, done: tuple[str, ...], limit_s: float) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        order = httpx.get(f"{url}/orders/{order_id}", headers=AUTH, timeout=10).json()
        if order["send"]["status"] in done or order["status"] in ("failed", "expired"):
            return order
        time.sleep(0.3)
    return httpx.get(f"{url}/orders/{order_id}", headers=AUTH, timeout=10).json()


def _order(url: str, **fields: Any) -> Any:
    answer = httpx.post(f"{url}/orders", json={"clinical": CLINICAL, **fields}, headers=AUTH)
    return {"status_code": answer.status_code, **answer.json()}


def _flow(url: str, settings: Settings, http_port: int) -> dict[str, Any]:
    report: dict[str, Any] = {
        "echo_allowed": _echo(settings.dicom.dicom_port, "PACS"),
        "echo_intruder": _echo(settings.dicom.dicom_port, "INTRUDER"),
    }
    first = _order(url, study_instance_uid=STUDY, destination="TPS")
    report["order_first_created"] = {k: first[k] for k in ("status_code", "status")}
    push = ["storescu", "-aet", "PACS", "-aec", "LLMCTV", "+sd", "+r", "127.0.0.1"]
    started = time.monotonic()
    stored = subprocess.run(
        [*push, str(settings.dicom.dicom_port), str(LUNG1_CT)], capture_output=True, timeout=120
    )
    report["storescu"] = stored.returncode
    report["order_first"] = _wait_order(url, first["order_id"], ("sent", "failed"), 150)
    report["order_first_seconds"] = round(time.monotonic() - started, 1)
    instances = _get(http_port, "/instances?expand")
    report["orthanc"] = [
        {k: i["MainDicomTags"].get(k) for k in ("SOPInstanceUID",)} for i in instances
    ]
    second = _order(url, accession_number=ACCESSION, destination="DOWN")
    report["study_first"] = _wait_order(url, second["order_id"], ("failed",), 150)
    retry = httpx.post(f"{url}/orders/{second['order_id']}/send", headers=AUTH)
    report["retry_status_code"] = retry.status_code
    time.sleep(0.5)
    report["after_retry"] = _wait_order(url, second["order_id"], ("failed",), 60)
    return report


def run(workdir: Path) -> dict[str, Any]:
    """The whole scenario; returns the JSON-able report."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    dicom_port, http_port = free_port(), free_port()
    config = _write_config(workdir, dicom_port, http_port)
    log = (workdir / "orthanc.log").open("wb")
    orthanc = subprocess.Popen(["Orthanc", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_rest(http_port, orthanc, 30.0)
        settings = _settings(workdir, dicom_port)
        with serve_app(create_app(settings)) as url:
            return _flow(url, settings, http_port)
    finally:
        _stop(orthanc)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    print(json.dumps(run(args.workdir), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
