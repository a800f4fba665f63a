"""The review station end to end in a real browser, on LUNG1, with a real Orthanc as the TPS.

Run inside ``unshare -n`` (Orthanc listens on all interfaces; in a private network namespace
only ``lo`` exists), or with ``--no-orthanc`` anywhere (the send-back part is skipped):

1. Orthanc starts; the gateway starts with ``require_review=true``, a destination ``TPS`` =
   that Orthanc, and :class:`review_helpers.NoteEngine` in place of the network;
2. LUNG1 arrives as a received CT series; an order (N1, left, breast conserving, destination
   TPS) matches it and its job succeeds; Orthanc holds nothing and ``POST /orders/{id}/send``
   answers 409 ``review_required``;
3. chromium logs in, opens the worklist and the job; the slice view is checked by its pixels,
   scrolled with the wheel and the arrow keys, switched to coronal, sagittal and the lung
   window; structures are toggled; a counterfactual N0 is run and its delta read;
4. the reviewer approves on the page; the order's RTSTRUCT then reaches Orthanc and its tags
   are read back (ApprovalStatus, ReviewerName).

Timings come from the page (``window.llmctvTiming``, Performance API clock). One JSON report
is printed on the last line of stdout; ``tests/e2e/test_review_browser.py`` asserts on it.

Usage: ``unshare -n python tests/review_scenario.py --workdir DIR [--screenshots DIR]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

import httpx  # noqa: E402
import pydicom  # noqa: E402
from browser import (  # noqa: E402
    all_by_testid,
    by_testid,
    chromium,
    colour_pixels,
    element_pixels,
    login,
    wait_for,
)
from live_server import free_port, serve_app  # noqa: E402
from review_helpers import REVIEWER_TOKEN, SUBMITTER_TOKEN, TOKENS, NoteEngine, bearer  # noqa: E402

from service.app import create_app  # noqa: E402
from service.dicomnet.assembly import ReceivedSeries  # noqa: E402
from service.order_desk import received_root, record_series  # noqa: E402
from service.settings import Settings  # noqa: E402

LUNG1_CT = TESTS.parents[1] / "shared" / "data" / "lung1_ct_rtstruct" / "LUNG1-001" / "image"
N1_LEFT = {
    "diagnoses": [{"side": "left", "surgery": "breast_conserving", "t_stage": "2", "n_stage": "1"}],
    "age": 54,
    "pathology": "IDC",
}
N0_RIGHT = {
    "diagnoses": [{"side": "right", "surgery": "total_mastectomy", "t_stage": "1c", "n_stage": "0"}]
}
API = bearer(SUBMITTER_TOKEN)
READER = bearer(REVIEWER_TOKEN)  # an order's job has no submitter: reviewers read it
COLD_OPENS = 5
VIEW_MS: list[float] = []  # when view.json (CT and structures loaded) arrived, per open
WARM_OPENS = 3
STEPS = 24
JUMPS = 6
READING_S = 1.0  # a reviewer reads the worklist before clicking a job


def _receive_lung1(settings: Settings) -> str:
    """Put LUNG1 where the DICOM listener would have stored it; its StudyInstanceUID."""
    first = pydicom.dcmread(sorted(LUNG1_CT.glob("*.dcm"))[0], stop_before_pixels=True)
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    folder = received_root(settings.storage) / study / series
    folder.mkdir(parents=True)
    paths = sorted(LUNG1_CT.glob("*.dcm"))
    for path in paths:
        shutil.copy(path, folder / path.name)
    record_series(ReceivedSeries(study, series, "", "CT", "PACS", folder, len(paths)))
    return study


def _wait_order(url: str, order_id: str, done: Any, limit_s: float = 240.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while True:
        order: dict[str, Any] = httpx.get(f"{url}/orders/{order_id}", headers=API).json()
        if done(order) or time.monotonic() > deadline:
            return order
        time.sleep(0.25)


def _job_done(order: dict[str, Any]) -> bool:
    job = order.get("job") or {}
    return job.get("status") in ("succeeded", "failed") or order["status"] in ("failed", "expired")


def _timing(driver: Any) -> dict[str, Any]:
    timing: dict[str, Any] = driver.execute_script("return window.llmctvTiming || null") or {}
    return timing


def _open_job(driver: Any, url: str, job_id: str) -> float:
    """Open the review page; ms from navigation start to the first drawn slice."""
    driver.get(f"{url}/ui/jobs/{job_id}")
    first = wait_for(
        lambda: _timing(driver).get("firstSliceMs"), timeout=60, what="the first slice"
    )
    VIEW_MS.append(float(_timing(driver).get("viewMs") or -1))
    return float(first)


def _forget(driver: Any, app: Any) -> None:
    """Nothing cached: not in the gateway, not in the browser."""
    app.state.llmctv_ui.forget()
    driver.execute_cdp_cmd("Network.clearBrowserCache", {})


def _drawn(driver: Any) -> str:
    return str(by_testid(driver, "slice-view").get_attribute("data-drawn") or "")


def _step(driver: Any, action: Any) -> str:
    before = _drawn(driver)
    action()
    return wait_for(lambda: (_drawn(driver) != before) and _drawn(driver), what="a new slice")


def _canvas_check(driver: Any, colours: list[tuple[int, int, int]]) -> dict[str, Any]:
    pixels = element_pixels(by_testid(driver, "slice-view"))
    grey = pixels.mean(axis=-1)
    return {
        "size": list(pixels.shape[:2]),
        "grey_std": round(float(grey.std()), 1),
        "bright_fraction": round(float((grey > 60).mean()), 3),
        "contour_pixels": sum(colour_pixels(pixels, c) for c in colours),
    }


def _browser_part(url: str, app: Any, job_id: str, shots: Path) -> dict[str, Any]:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.keys import Keys

    report: dict[str, Any] = {}
    with chromium() as driver:
        login(driver, url, REVIEWER_TOKEN)
        report["after_login_url"] = driver.current_url
        rows = all_by_testid(driver, "job-row")
        report["worklist_rows"] = len(rows)
        report["worklist_has_job"] = any(r.get_attribute("data-job") == job_id for r in rows)
        driver.save_screenshot(str(shots / "worklist.png"))
        driver.get(f"{url}/ui/?filter=needs-review")
        report["needs_review_rows"] = [
            r.get_attribute("data-job") for r in all_by_testid(driver, "job-row")
        ]
        cold, from_worklist = [], []
        for _ in range(COLD_OPENS):
            _forget(driver, app)  # as if the job had never been opened
            cold.append(_open_job(driver, url, job_id))
        for _ in range(COLD_OPENS):
            _forget(driver, app)
            driver.get(f"{url}/ui/?filter=needs-review")  # loads the next job to review
            time.sleep(READING_S)
            from_worklist.append(_open_job(driver, url, job_id))
        warm = [_open_job(driver, url, job_id) for _ in range(WARM_OPENS)]
        report["first_slice_ms"] = {"cold": cold, "from_worklist": from_worklist, "warm": warm}
        report["view_json_ms"] = list(VIEW_MS)
        view = httpx.get(f"{url}/ui/jobs/{job_id}/view.json", headers=READER).json()
        colours = [tuple(r["color"]) for r in view["rois"]]
        report["rois"] = [r["name"] for r in view["rois"]]
        report["canvas"] = _canvas_check(driver, colours)
        report["warnings_shown"] = [w.text for w in all_by_testid(driver, "warning")]
        canvas = by_testid(driver, "slice-view")
        start = _drawn(driver)
        wheel = ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, 120)
        after_wheel = _step(driver, wheel.perform)
        report["wheel"] = {"from": start, "to": after_wheel}
        report["slice_index_text"] = by_testid(driver, "slice-index").text
        for n in range(STEPS):
            key = Keys.ARROW_DOWN if n < STEPS // 2 else Keys.ARROW_UP
            _step(driver, lambda key=key: canvas.send_keys(key))
        report["slice_change_ms"] = _timing(driver).get("changes", [])
        for n in range(JUMPS):  # 10 slices at a time: beyond the prefetched neighbours
            key = Keys.PAGE_DOWN if n < JUMPS // 2 else Keys.PAGE_UP
            _step(driver, lambda key=key: canvas.send_keys(key))
        report["slice_jump_ms"] = _timing(driver).get("changes", [])[STEPS + 1 :]
        toggles = all_by_testid(driver, "structure-toggle")
        report["toggles"] = [t.get_attribute("data-roi") for t in toggles]
        for toggle in toggles:
            toggle.click()
        _step(driver, lambda: canvas.send_keys(Keys.ARROW_DOWN))
        report["canvas_all_hidden"] = _canvas_check(driver, colours)
        for toggle in toggles:
            toggle.click()
        _step(driver, lambda: canvas.send_keys(Keys.ARROW_UP))
        for plane in ("coronal", "sagittal"):
            button = driver.find_element("css selector", f'button[data-plane="{plane}"]')
            _step(driver, button.click)
            report[f"canvas_{plane}"] = _canvas_check(driver, colours)
            if plane == "coronal":
                driver.save_screenshot(str(shots / "review-coronal.png"))
        _step(driver, driver.find_element("css selector", 'button[data-plane="axial"]').click)
        _step(driver, driver.find_element("css selector", 'button[data-window="lung"]').click)
        report["canvas_lung"] = _canvas_check(driver, colours)
        _step(driver, driver.find_element("css selector", 'button[data-window="soft"]').click)
        report.update(_counterfactual(driver))
        _go_to_axial(driver, _slice_where(url, job_id, "CTVn"))  # where the two sets differ
        driver.save_screenshot(str(shots / "review.png"))
        report["local_storage"] = driver.execute_script("return JSON.stringify(localStorage)")
        report["document_cookie"] = driver.execute_script("return document.cookie")
        report["token_in_page"] = REVIEWER_TOKEN in driver.page_source
        by_testid(driver, "approve").click()
        wait_for(
            lambda: by_testid(driver, "review-status").get_attribute("data-status") != "pending",
            what="the decision",
        )
        report["review_status_text"] = by_testid(driver, "review-status").text
        driver.save_screenshot(str(shots / "review-approved.png"))
    return report


def _slice_where(url: str, job_id: str, prefix: str) -> int:
    """The middle axial slice holding a contour of an ROI whose name starts with ``prefix``."""
    view = httpx.get(f"{url}/ui/jobs/{job_id}/view.json", headers=READER).json()
    numbers = {r["number"] for r in view["rois"] if r["name"].startswith(prefix)}
    found = []
    for k in range(view["planes"]["axial"]["count"]):
        entries = httpx.get(
            f"{url}/ui/jobs/{job_id}/contours/axial/{k}.json", headers=READER
        ).json()
        if any(e["roi"] in numbers for e in entries):
            found.append(k)
    return found[len(found) // 2] if found else int(view["start"]["axial"])


def _go_to_axial(driver: Any, target: int) -> None:
    from selenium.webdriver.common.keys import Keys

    canvas = by_testid(driver, "slice-view")
    while (now := int(by_testid(driver, "slice-index").get_attribute("data-index"))) != target:
        key = Keys.ARROW_DOWN if target > now else Keys.ARROW_UP
        _step(driver, lambda key=key: canvas.send_keys(key))


def _counterfactual(driver: Any) -> dict[str, Any]:
    from selenium.webdriver.support.ui import Select

    Select(by_testid(driver, "counterfactual-field")).select_by_value("n_stage")
    Select(by_testid(driver, "counterfactual-value")).select_by_value("0")
    by_testid(driver, "counterfactual-run").click()
    wait_for(
        lambda: (
            by_testid(driver, "counterfactual-state").get_attribute("data-state")
            in ("done", "error")
        ),
        timeout=240,
        what="the counterfactual job",
    )
    delta = by_testid(driver, "counterfactual-delta")
    rows = delta.find_elements("css selector", "tr[data-roi]")
    return {
        "counterfactual_state": by_testid(driver, "counterfactual-state").text,
        "counterfactual_delta": {
            r.get_attribute("data-roi"): float(r.get_attribute("data-delta")) for r in rows
        },
    }


def _orthanc_instances(http_port: int | None) -> list[dict[str, Any]]:
    if http_port is None:
        return []
    from orthanc_scenario import _get

    found = []
    for item in _get(http_port, "/instances?expand"):
        tags = _get(http_port, f"/instances/{item['ID']}/simplified-tags")
        found.append(
            {
                "SOPInstanceUID": tags.get("SOPInstanceUID"),
                "Modality": tags.get("Modality"),
                "ApprovalStatus": tags.get("ApprovalStatus"),
                "ReviewerName": tags.get("ReviewerName"),
            }
        )
    return found


def _flow(workdir: Path, shots: Path, orthanc_port: int | None, http_port: int | None) -> Any:
    destination = f"TPS=ORTHANC@127.0.0.1:{orthanc_port or free_port()}"
    settings = Settings.from_env(
        api_tokens=TOKENS,
        storage_dir=workdir / "llmctv",
        dicom_listener=False,
        require_review=True,
        dicom_destinations=[destination],
        dicom_send_retries=1,
        dicom_send_backoff_s=0.2,
    )
    report: dict[str, Any] = {}
    app = create_app(settings, engine=NoteEngine())
    with serve_app(app) as url:
        study = _receive_lung1(settings)
        body = {"study_instance_uid": study, "clinical": N1_LEFT, "destination": "TPS"}
        order = httpx.post(f"{url}/orders", json=body, headers=API).json()
        other = {"study_instance_uid": study, "clinical": N0_RIGHT}
        httpx.post(f"{url}/orders", json=other, headers=API)
        order = _wait_order(url, order["order_id"], _job_done)
        job_id = order["job"]["job_id"]
        report["job_before"] = order["job"]
        report["send_before"] = order["send"]
        time.sleep(2.0)  # the desk has had two rounds to send, had it been allowed to
        report["orthanc_before"] = _orthanc_instances(http_port)
        refused = httpx.post(f"{url}/orders/{order['order_id']}/send", headers=API)
        report["send_refused"] = {"status_code": refused.status_code, **refused.json()}
        report["browser"] = _browser_part(url, app, job_id, shots)
        final = _wait_order(url, order["order_id"], lambda o: o["send"]["status"] != "pending")
        final = _wait_order(url, order["order_id"], lambda o: o["send"]["status"] != "sending")
        report["order_after"] = final
        report["orthanc_after"] = _orthanc_instances(http_port)
    return report


def run(workdir: Path, shots: Path, with_orthanc: bool) -> dict[str, Any]:
    """The whole scenario; returns the JSON-able report."""
    shots.mkdir(parents=True, exist_ok=True)
    if not with_orthanc:
        return {"orthanc": False, **_flow(workdir, shots, None, None)}
    from orthanc_scenario import _stop, _wait_for_rest, _write_config

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    dicom_port, http_port = free_port(), free_port()
    config = _write_config(workdir, dicom_port, http_port)
    log = (workdir / "orthanc.log").open("wb")
    orthanc = subprocess.Popen(["Orthanc", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_rest(http_port, orthanc, 30.0)
        return {"orthanc": True, **_flow(workdir, shots, dicom_port, http_port)}
    finally:
        _stop(orthanc)
        log.close()


def summarise(report: dict[str, Any]) -> dict[str, float]:
    """Medians of the page's timings (ms)."""
    browser = report.get("browser", {})
    first = browser.get("first_slice_ms", {})
    changes = browser.get("slice_change_ms", [])
    return {
        "first_slice_cold_median_ms": statistics.median(first["cold"]) if first else -1.0,
        "first_slice_from_worklist_median_ms": (
            statistics.median(first["from_worklist"]) if first else -1.0
        ),
        "first_slice_warm_median_ms": statistics.median(first["warm"]) if first else -1.0,
        "slice_change_median_ms": statistics.median(changes) if changes else -1.0,
        "slice_change_max_ms": max(changes) if changes else -1.0,
        "slice_jump_median_ms": (
            statistics.median(browser["slice_jump_ms"]) if browser.get("slice_jump_ms") else -1.0
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--screenshots", type=Path, default=None)
    parser.add_argument("--no-orthanc", action="store_true")
    args = parser.parse_args()
    shots = args.screenshots or args.workdir / "screenshots"
    try:
        report = run(args.workdir, shots, not args.no_orthanc)
        report["summary"] = summarise(report)
    except Exception as exc:
        report = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-4000:]}
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
