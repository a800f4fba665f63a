"""Orthanc's DICOMweb plugin pushes LUNG1 to us over STOW-RS; the order posted first gets its
RTSTRUCT back in Orthanc (inside ``unshare -n``: Orthanc listens on all interfaces)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, SHARED_DATA
from private_network import namespace_problem, run_scenario

SCENARIO = REPO / "tests" / "stow_scenario.py"
LUNG1_CT = SHARED_DATA / "lung1_ct_rtstruct" / "LUNG1-001" / "image"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def _problem() -> str | None:
    if not PLUGIN.is_file():
        return f"the Orthanc DICOMweb plugin is not installed ({PLUGIN}: orthanc-dicomweb)"
    if not LUNG1_CT.is_dir():
        return f"shared data absent: {LUNG1_CT}"
    return namespace_problem("Orthanc")


@pytest.fixture(scope="module")
def stow_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    problem = _problem()
    if problem:
        pytest.skip(problem)
    report = run_scenario(SCENARIO, tmp_path_factory.mktemp("stow"))
    assert "error" not in report, report
    return report


def test_orthanc_stow_of_lung1_yields_the_orders_rtstruct(stow_report: dict[str, Any]) -> None:
    assert stow_report["order_created"]["status_code"] == 201
    assert stow_report["order_created"]["status"] == "waiting"
    # Orthanc's STOW-RS client reports what it sent; it fails the call on a non-2xx answer.
    assert stow_report["stow"]["InstancesCount"] == "134"
    assert stow_report["stored_ct_files"] == 134
    order = stow_report["order"]
    assert order["status"] == "matched"
    assert order["job"]["status"] == "succeeded"
    assert order["send"]["status"] == "sent"
    assert order["job"]["rtstruct_sop_instance_uid"] in stow_report["orthanc_sop_instance_uids"]
