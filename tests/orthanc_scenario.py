"""Send an RTSTRUCT to a real Orthanc with our sender; run it inside ``unshare -n``.

Orthanc 1.10 cannot bind to one address and listens on all interfaces, so this script is
meant to run in a private network namespace (``unshare -n``) where only ``lo`` exists. It
brings ``lo`` up, starts Orthanc on free ports with a configuration in ``--workdir``, waits
for its REST API, sends ``--rtstruct`` with :func:`service.dicomnet.sender.send_instances`,
reads ``/instances`` back, tries a wrong called AE title, stops Orthanc and prints one JSON
object on the last line of stdout (the test asserts on it).

Usage: ``unshare -n python tests/orthanc_scenario.py --rtstruct FILE --workdir DIR``
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.dicomnet.destinations import DicomDestination
from service.dicomnet.errors import DicomSendError
from service.dicomnet.sender import send_instances

ORTHANC_AET = "ORTHANC"
CALLING_AET = "LLMCTV"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_config(workdir: Path, dicom_port: int, http_port: int) -> Path:
    config = {
        "Name": "llmctv-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "DicomAet": ORTHANC_AET,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomModalities": {},
        "Plugins": [],
        "SaveJobs": False,
        "HttpThreadsCount": 4,
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _get(http_port: int, route: str) -> Any:
    url = f"http://127.0.0.1:{http_port}{route}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _wait_for_rest(http_port: int, orthanc: subprocess.Popen[bytes], limit_s: float) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if orthanc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with status {orthanc.returncode}")
        try:
            return _get(http_port, "/system")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise RuntimeError(f"Orthanc REST API did not answer within {limit_s:.0f} s")


def _send(rtstruct: Path, destination: DicomDestination) -> dict[str, Any]:
    try:
        result = send_instances(
            [rtstruct], destination, calling_ae=CALLING_AET, retries=2, backoff_s=0.2
        )
    except DicomSendError as exc:
        return {"ok": False, "code": exc.code, "failure": exc.failure, "detail": exc.detail}
    return {
        "ok": True,
        "attempts": result.attempts,
        "status": result.status,
        "sop_instance_uids": list(result.sop_instance_uids),
    }


def _wrong_called_aet(rtstruct: Path, port: int) -> dict[str, Any]:
    wrong = DicomDestination("WRONG", "NOT-ORTHANC", "127.0.0.1", port)
    # Orthanc answers A-ASSOCIATE-RJ and closes at once; about one time in fifteen the close
    # arrives as a reset that discards the unread RJ, and pynetdicom sees an abort (its log
    # still says "Rejected association"). The sender's own retries, as deployed, get the RJ.
    try:
        send_instances([rtstruct], wrong, calling_ae=CALLING_AET, retries=2, backoff_s=0.2)
    except DicomSendError as exc:
        return {"code": exc.code, "failure": exc.failure, "detail": exc.detail}
    return {"code": None}


def _stop(orthanc: subprocess.Popen[bytes]) -> int:
    orthanc.terminate()
    try:
        return orthanc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        orthanc.kill()
        return orthanc.wait()


def run(rtstruct: Path, workdir: Path) -> dict[str, Any]:
    """The whole scenario; returns the JSON-able report."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    dicom_port, http_port = _free_port(), _free_port()
    config = _write_config(workdir, dicom_port, http_port)
    log = (workdir / "orthanc.log").open("wb")
    orthanc = subprocess.Popen(["Orthanc", str(config)], stdout=log, stderr=subprocess.STDOUT)
    report: dict[str, Any] = {}
    try:
        report["system"] = _wait_for_rest(http_port, orthanc, 30.0)
        destination = DicomDestination("ORTHANC", ORTHANC_AET, "127.0.0.1", dicom_port)
        report["send"] = _send(rtstruct, destination)
        instances = _get(http_port, "/instances?expand")
        report["orthanc_sop_instance_uids"] = [
            item["MainDicomTags"]["SOPInstanceUID"] for item in instances
        ]
        report["wrong_called_aet"] = _wrong_called_aet(rtstruct, dicom_port)
    finally:
        report["orthanc_exit"] = _stop(orthanc)
        log.close()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rtstruct", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    try:
        report = run(args.rtstruct, args.workdir)
    except (RuntimeError, OSError, subprocess.CalledProcessError, urllib.error.URLError) as exc:
        log = args.workdir / "orthanc.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        report = {"error": f"{type(exc).__name__}: {exc}", "orthanc_log": tail}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
