"""A real Orthanc pushes LUNG1 to us over DICOMweb STOW-RS; run it inside ``unshare -n``.

Orthanc (with its DICOMweb plugin, Debian ``orthanc-dicomweb``) holds the LUNG1 CT (uploaded
through its REST API) and knows the gateway as the DICOMweb server ``llmctv``. An order is
posted first; Orthanc's ``POST /dicom-web/servers/llmctv/stow`` sends the study to our
``/dicomweb/studies``; the order's RTSTRUCT comes back to Orthanc over C-STORE (destination
``TPS``), checked through Orthanc's REST API.

Prints one JSON report on the last line of stdout; ``tests/e2e/test_dicomweb_orthanc.py`` asserts
on it. Usage: ``unshare -n python tests/stow_scenario.py --workdir DIR``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import httpx  # noqa: E402
from gateway_client import AUTH, TOKEN  # noqa: E402
from live_server import free_port, serve_app  # noqa: E402
from orthanc_scenario import _get, _stop, _wait_for_rest, _write_config  # noqa: E402
from pacs_scenario import CLINICAL, LUNG1_CT, STUDY, _settings, _wait_order  # noqa: E402

from service.app import create_app  # noqa: E402

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def _orthanc_config(workdir: Path, dicom_port: int, http_port: int, gateway: str) -> Path:
    path = _write_config(workdir, dicom_port, http_port)
    config = json.loads(path.read_text())
    config["Plugins"] = [str(PLUGIN)]
    config["DicomWeb"] = {
        "Enable": True,
        "Root": "/dicom-web/",
        "Servers": {
            "llmctv": {
                "Url": f"{gateway}/dicomweb/",
                "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"},
            }
        },
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def _post(http_port: int, route: str, body: bytes, content_type: str) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}{route}",
        data=body,
        headers={"Content-Type": content_type},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def _upload_lung1(http_port: int) -> str:
    """Put LUNG1's CT into Orthanc; its Orthanc study id."""
    study = ""
    for path in sorted(LUNG1_CT.glob("*.dcm")):
        answer = _post(http_port, "/instances", path.read_bytes(), "application/dicom")
        study = str(answer["ParentStudy"])
    return study


def _flow(url: str, http_port: int, orthanc_study: str) -> dict[str, Any]:
    report: dict[str, Any] = {}
    order = httpx.post(
        f"{url}/orders",
        json={"clinical": CLINICAL, "study_instance_uid": STUDY, "destination": "TPS"},
        headers=AUTH,
    )
    report["order_created"] = {"status_code": order.status_code, **order.json()}
    started = time.monotonic()
    stow = {"Resources": [orthanc_study], "Synchronous": True}
    report["stow"] = _post(
        http_port, "/dicom-web/servers/llmctv/stow", json.dumps(stow).encode(), "application/json"
    )
    report["stow_seconds"] = round(time.monotonic() - started, 2)
    order_id = report["order_created"]["order_id"]
    report["order"] = _wait_order(url, order_id, ("sent", "failed"), 240)
    report["order_seconds"] = round(time.monotonic() - started, 1)
    instances = _get(http_port, "/instances?expand")
    report["orthanc_sop_instance_uids"] = [i["MainDicomTags"]["SOPInstanceUID"] for i in instances]
    return report


def run(workdir: Path) -> dict[str, Any]:
    """The whole scenario; returns the JSON-able report."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    dicom_port, http_port = free_port(), free_port()
    settings = _settings(workdir, dicom_port)
    with serve_app(create_app(settings)) as url:
        config = _orthanc_config(workdir, dicom_port, http_port, url)
        log = (workdir / "orthanc.log").open("wb")
        orthanc = subprocess.Popen(["Orthanc", str(config)], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_rest(http_port, orthanc, 30.0)
            orthanc_study = _upload_lung1(http_port)
            report = _flow(url, http_port, orthanc_study)
            received = settings.storage.storage_dir / "dicom" / "received" / STUDY
            report["stored_ct_files"] = len(list(received.glob("*/*.dcm")))
            return report
        finally:
            _stop(orthanc)
            log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    try:
        report = run(args.workdir)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        log = args.workdir / "orthanc.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        report = {"error": f"{type(exc).__name__}: {exc}", "orthanc_log": tail}
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
