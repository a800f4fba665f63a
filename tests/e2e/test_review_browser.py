"""The review station in a real browser (chromium + selenium) on LUNG1, with a real Orthanc.

One run of ``tests/review_scenario.py`` (inside ``unshare -n`` when Orthanc can run there,
else without the Orthanc part) feeds every test here; see that script for the steps.
"""

from __future__ import annotations

import json
import statistics

import pytest
from browser import browser_problem
from conftest import REPO, SHARED_DATA
from private_network import namespace_problem, run_scenario
from review_helpers import REVIEWER_TOKEN

SCENARIO = REPO / "tests" / "review_scenario.py"
LUNG1_CT = SHARED_DATA / "lung1_ct_rtstruct" / "LUNG1-001" / "image"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    problem = browser_problem()
    if problem:
        pytest.skip(problem)
    if not LUNG1_CT.is_dir():
        pytest.skip(f"shared data absent: {LUNG1_CT}")
    without_orthanc = namespace_problem("Orthanc")
    found: dict[str, object] = run_scenario(
        SCENARIO,
        tmp_path_factory.mktemp("review-browser"),
        *(["--no-orthanc"] if without_orthanc else []),
        private=without_orthanc is None,
        timeout=600,
    )
    assert "error" not in found, found
    found["why_no_orthanc"] = without_orthanc
    return found


def _browser(report: dict[str, object]) -> dict[str, object]:
    browser = report["browser"]
    assert isinstance(browser, dict)
    return browser


def test_logging_in_shows_the_worklist_with_the_job(report: dict[str, object]) -> None:
    browser = _browser(report)
    assert str(browser["after_login_url"]).endswith("/ui/")
    assert browser["worklist_has_job"] is True
    job = report["job_before"]
    assert isinstance(job, dict)
    assert job["job_id"] in browser["needs_review_rows"]  # type: ignore[operator]


def test_the_slice_view_shows_ct_with_contours(report: dict[str, object]) -> None:
    browser = _browser(report)
    assert browser["rois"] == ["CTV", "CTVp_Breast_L", "CTVn_Axilla_L"]
    for view in ("canvas", "canvas_coronal", "canvas_sagittal", "canvas_lung"):
        canvas = browser[view]
        assert isinstance(canvas, dict)
        assert canvas["grey_std"] > 20, (view, canvas)  # an image, not a blank element
        assert canvas["bright_fraction"] > 0.05, (view, canvas)
        assert canvas["contour_pixels"] > 200, (view, canvas)  # an ROI's colour is drawn
    hidden = browser["canvas_all_hidden"]
    assert isinstance(hidden, dict)
    assert hidden["contour_pixels"] == 0 and hidden["grey_std"] > 20  # toggled off: CT only
    assert browser["toggles"] == browser["rois"]


def test_scrolling_changes_the_slice(report: dict[str, object]) -> None:
    browser = _browser(report)
    wheel = browser["wheel"]
    assert isinstance(wheel, dict)
    assert wheel["from"] != wheel["to"]
    assert str(wheel["to"]).startswith("axial/")
    assert str(browser["slice_index_text"]).startswith("axial ")


def test_first_slice_and_slice_changes_are_fast(report: dict[str, object]) -> None:
    browser = _browser(report)
    first = browser["first_slice_ms"]
    changes = browser["slice_change_ms"]
    assert isinstance(first, dict) and isinstance(changes, list)
    assert len(changes) >= 20
    assert statistics.median(changes) <= 100
    assert statistics.median(first["from_worklist"]) <= 1000
    assert statistics.median(first["cold"]) <= 2000  # nothing cached; loaded CI machines


def test_counterfactual_n0_shows_a_negative_nodal_delta(report: dict[str, object]) -> None:
    browser = _browser(report)
    assert browser["counterfactual_state"] == "done"
    delta = browser["counterfactual_delta"]
    assert isinstance(delta, dict)
    nodal = {name: cc for name, cc in delta.items() if name.startswith("CTVn")}
    assert nodal and all(cc < 0 for cc in nodal.values()), delta
    assert delta["CTV"] < 0
    assert delta["CTVp_Breast_L"] == 0


def test_no_token_reaches_the_page_or_its_storage(report: dict[str, object]) -> None:
    browser = _browser(report)
    assert browser["local_storage"] == "{}"
    assert browser["document_cookie"] == ""  # the session cookie is HttpOnly
    assert browser["token_in_page"] is False
    assert REVIEWER_TOKEN not in json.dumps(report)


def test_the_rtstruct_reaches_orthanc_only_after_approval(report: dict[str, object]) -> None:
    if report["why_no_orthanc"]:
        pytest.skip(str(report["why_no_orthanc"]))
    assert report["orthanc_before"] == []
    refused = report["send_refused"]
    assert isinstance(refused, dict)
    assert refused["status_code"] == 409 and refused["code"] == "review_required"
    assert str(_browser(report)["review_status_text"]).startswith("approved by alice")
    order = report["order_after"]
    assert isinstance(order, dict)
    assert order["send"]["status"] == "sent", order["send"]
    job = order["job"]
    assert job["review"]["status"] == "approved"
    (instance,) = report["orthanc_after"]  # type: ignore[misc]
    assert instance["Modality"] == "RTSTRUCT"
    assert instance["ApprovalStatus"] == "APPROVED"
    assert instance["ReviewerName"] == "alice"
    assert instance["SOPInstanceUID"] == job["rtstruct_sop_instance_uid"]
    assert instance["SOPInstanceUID"] != job["review"]["unapproved_sop_instance_uid"]
