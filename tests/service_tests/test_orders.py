"""Orders: clinical fields for studies that arrive over DICOM; matching, expiry, send-back."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from conftest import REPO, SHARED_DATA
from fake_engine import HoldingDispatcher
from gateway_client import AUTH, TOKEN
from live_server import serve_app
from private_network import namespace_problem, run_scenario

from model.lab.phantoms.cohort import WrittenCase
from service.app import create_app
from service.dicomnet.assembly import ReceivedSeries
from service.order_desk import OrderDesk, received_root, record_series
from service.orders import (
    Order,
    OrderNotFoundError,
    OrderStatus,
    OrderStore,
    SendState,
    SendStatus,
)
from service.retention import RetentionTimer, purge_closed_orders, purge_received
from service.settings import Settings
from workers.jobs import FileJobStore, JobFiles, utcnow

SCENARIO = REPO / "tests" / "pacs_scenario.py"
LUNG1_CT = SHARED_DATA / "lung1_ct_rtstruct" / "LUNG1-001" / "image"
CLINICAL = {
    "diagnoses": [{"side": "left", "surgery": "total_mastectomy", "t_stage": "2", "n_stage": "2"}]
}


@pytest.fixture(scope="module")
def orders_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings.from_env(
        api_tokens=[TOKEN],
        storage_dir=tmp_path_factory.mktemp("orders"),
        dicom_listener=False,
        dicom_destinations=["TPS=PLANNING@127.0.0.1:104"],
    )
    with serve_app(create_app(settings)) as url:
        yield url


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"clinical": CLINICAL}, "invalid_request"),
        ({"study_instance_uid": "1.2.3", "clinical": {"diagnoses": []}}, "invalid_clinical"),
        (
            {"study_instance_uid": "1.2.3", "clinical": CLINICAL, "destination": "X"},
            "unknown_destination",
        ),
        ({"study_instance_uid": "../etc", "clinical": CLINICAL}, "invalid_request"),
    ],
    ids=["no-study", "bad-clinical", "unknown-destination", "bad-uid"],
)
def test_invalid_orders_are_refused(
    orders_gateway: str, body: dict[str, object], code: str
) -> None:
    answer = httpx.post(f"{orders_gateway}/orders", json=body, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == code


def test_order_waits_and_is_readable(orders_gateway: str) -> None:
    body = {"study_instance_uid": "1.2.3.4", "clinical": CLINICAL, "destination": "TPS"}
    created = httpx.post(f"{orders_gateway}/orders", json=body, headers=AUTH)
    assert created.status_code == 201, created.text
    order = httpx.get(orders_gateway + created.json()["status_url"], headers=AUTH).json()
    assert order["status"] == "waiting"
    assert order["send"]["status"] == "pending"
    assert order["job"] is None
    assert httpx.get(f"{orders_gateway}/orders/{order['order_id']}").status_code == 401
    assert httpx.get(f"{orders_gateway}/orders/0123abcd", headers=AUTH).status_code == 404


def _desk(tmp_path: Path) -> tuple[OrderDesk, HoldingDispatcher]:
    settings = Settings.from_env(storage_dir=tmp_path, dicom_listener=False)
    files = JobFiles(tmp_path)
    holding = HoldingDispatcher()
    desk = OrderDesk(settings, OrderStore(tmp_path), FileJobStore(files), files, holding)
    return desk, holding


def _receive(desk: OrderDesk, case: WrittenCase, modality: str = "CT") -> ReceivedSeries:
    import pydicom

    first = pydicom.dcmread(case.ct_files[0], stop_before_pixels=True)
    folder = received_root(desk.settings.storage) / first.StudyInstanceUID / first.SeriesInstanceUID
    folder.mkdir(parents=True)
    for path in case.ct_files:
        shutil.copy(path, folder / f"{path.stem}.dcm")
    series = ReceivedSeries(
        str(first.StudyInstanceUID),
        str(first.SeriesInstanceUID),
        "ACC42",
        modality,
        "PACS",
        folder,
        len(case.ct_files),
    )
    record_series(series)
    return series


def test_study_first_order_matches_by_accession(
    tmp_path: Path, phantoms: list[WrittenCase]
) -> None:
    desk, holding = _desk(tmp_path)
    series = _receive(desk, phantoms[0])
    late = Order(
        accession_number="ACC42",
        clinical=CLINICAL,
        expires_at=utcnow() + timedelta(hours=1),
        created_by="bob",
    )
    early = Order(
        study_instance_uid="1.2.826.0.1.99",
        clinical=CLINICAL,
        expires_at=utcnow() + timedelta(hours=1),
    )
    desk.orders.create(late)
    desk.orders.create(early)
    desk.run_once()
    matched = desk.orders.get(late.order_id)
    assert matched.status is OrderStatus.MATCHED
    assert holding.submitted == [matched.job_id]
    job = desk.store.get(matched.job_id or "")
    assert job.series_instance_uid == series.series_instance_uid
    assert job.source == "dicom"
    assert job.submitted_by == "bob", "the order's job is its author's"
    assert len(list(desk.files.input_dir(job.job_id).glob("*.dcm"))) == len(phantoms[0].ct_files)
    assert desk.orders.get(early.order_id).status is OrderStatus.WAITING


def test_rtstruct_series_does_not_match(tmp_path: Path, phantoms: list[WrittenCase]) -> None:
    desk, holding = _desk(tmp_path)
    _receive(desk, phantoms[1], modality="RTSTRUCT")
    order = Order(
        accession_number="ACC42", clinical=CLINICAL, expires_at=utcnow() + timedelta(hours=1)
    )
    desk.orders.create(order)
    desk.run_once()
    assert desk.orders.get(order.order_id).status is OrderStatus.WAITING
    assert holding.submitted == []


def test_unmatched_order_expires(tmp_path: Path) -> None:
    desk, _ = _desk(tmp_path)
    order = Order(study_instance_uid="1.2.3", clinical=CLINICAL, expires_at=utcnow())
    desk.orders.create(order)
    desk.run_once()
    assert desk.orders.get(order.order_id).status is OrderStatus.EXPIRED


def test_refused_series_fails_the_order_with_its_code(
    tmp_path: Path, phantoms: list[WrittenCase]
) -> None:
    desk, holding = _desk(tmp_path)
    series = _receive(desk, phantoms[0])
    for path in sorted(series.folder.glob("*.dcm"))[5:8]:
        path.unlink()  # slices lost in transit
    order = Order(
        accession_number="ACC42", clinical=CLINICAL, expires_at=utcnow() + timedelta(hours=1)
    )
    desk.orders.create(order)
    desk.run_once()
    failed = desk.orders.get(order.order_id)
    assert failed.status is OrderStatus.FAILED
    assert failed.error is not None and failed.error["code"] == "missing_slices"
    assert holding.submitted == []


# --- the real thing: storescu -> listener -> job -> Orthanc, in a private network namespace ----
@pytest.fixture(scope="module")
def pacs_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    problem = namespace_problem("Orthanc", "storescu", "echoscu")
    if problem:
        pytest.skip(problem)
    if not LUNG1_CT.is_dir():
        pytest.skip(f"shared data absent: {LUNG1_CT}")
    report: dict[str, object] = run_scenario(SCENARIO, tmp_path_factory.mktemp("pacs"))
    return report


def test_listener_verifies_and_refuses_unknown_callers(pacs_report: dict[str, object]) -> None:
    assert pacs_report["echo_allowed"] == 0
    assert pacs_report["echo_intruder"] != 0


def test_order_first_then_pacs_push_reaches_orthanc(pacs_report: dict[str, object]) -> None:
    assert pacs_report["order_first_created"] == {"status_code": 201, "status": "waiting"}
    assert pacs_report["storescu"] == 0
    order = pacs_report["order_first"]
    assert isinstance(order, dict)
    assert order["status"] == "matched"
    assert order["job"]["status"] == "succeeded"
    assert order["send"]["status"] == "sent" and order["send"]["attempts"] == 1
    received = {i["SOPInstanceUID"] for i in pacs_report["orthanc"]}  # type: ignore[attr-defined]
    assert order["job"]["rtstruct_sop_instance_uid"] in received


def test_study_first_failed_send_is_visible_and_retried(pacs_report: dict[str, object]) -> None:
    order = pacs_report["study_first"]
    assert isinstance(order, dict)
    assert order["status"] == "matched" and order["job"]["status"] == "succeeded"
    assert order["send"]["status"] == "failed"
    assert "connection refused" in order["send"]["reason"]
    assert order["send"]["attempts"] == 2  # 1 + dicom_send_retries
    assert pacs_report["retry_status_code"] == 202
    again = pacs_report["after_retry"]
    assert isinstance(again, dict)
    assert again["send"]["status"] == "failed" and again["send"]["attempts"] == 4


def test_retention_removes_closed_old_orders_only(tmp_path: Path) -> None:
    orders = OrderStore(tmp_path)
    old, later = utcnow() - timedelta(hours=10), utcnow() + timedelta(hours=1)
    sending = SendState(status=SendStatus.PENDING)
    cases = {
        "a1": Order(order_id="a1", status=OrderStatus.EXPIRED, created_at=old, expires_at=old),
        "a2": Order(order_id="a2", status=OrderStatus.MATCHED, created_at=old, expires_at=later),
        "a3": Order(order_id="a3", created_at=old, expires_at=later),  # still waiting
        "a4": Order(
            order_id="a4",
            status=OrderStatus.MATCHED,
            created_at=old,
            expires_at=later,
            send=sending,
        ),
        "a5": Order(order_id="a5", status=OrderStatus.FAILED, expires_at=later),  # recent
    }
    for order in cases.values():
        orders.create(order)
    assert purge_closed_orders(orders, retention_hours=5) == 2
    assert sorted(o.order_id for o in orders.all()) == ["a3", "a4", "a5"]
    with pytest.raises(OrderNotFoundError):
        orders.get("a1")


def test_retention_purges_received_series_with_the_jobs(tmp_path: Path) -> None:
    received = tmp_path / "dicom" / "received"
    old_series = received / "1.2.3" / "1.2.3.1"
    new_series = received / "1.2.4" / "1.2.4.1"
    for folder in (old_series, new_series):
        folder.mkdir(parents=True)
        (folder / "1.2.3.1.1.dcm").write_bytes(b"instance")
        (folder / "series.json").write_text("{}")
    (old_series.parent / "refused.json").write_text("{}")
    long_ago = time.time() - 10 * 3600
    for path in (*old_series.iterdir(), old_series, old_series.parent / "refused.json"):
        os.utime(path, (long_ago, long_ago))
    files = JobFiles(tmp_path)
    timer = RetentionTimer(FileJobStore(files), files, retention_hours=5, interval_s=3600)
    assert timer.received == received
    assert purge_received(timer.received, retention_hours=5) == 1
    assert not (received / "1.2.3").exists()  # the series and its emptied study folder
    assert (new_series / "1.2.3.1.1.dcm").is_file()
    assert purge_received(received, retention_hours=5) == 0


def _store_received(desk: OrderDesk, case: WrittenCase, accession: str) -> ReceivedSeries:
    """The case's CT as the listener stores it (with its patient's identity), then complete."""
    import pydicom

    from service.dicomnet.storage import store_instance

    root = received_root(desk.settings.storage)
    for path in case.ct_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        study, series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        store_instance(
            root,
            study,
            series_uid,
            str(ds.SOPInstanceUID),
            path.read_bytes(),
            patient_id=str(ds.PatientID),
        )
    series = ReceivedSeries(
        study, series_uid, accession, "CT", "PACS", root / study / series_uid, len(case.ct_files)
    )
    record_series(series)
    return series


def test_an_accession_number_of_two_patients_matches_neither(
    tmp_path: Path, phantoms: list[WrittenCase]
) -> None:
    """Two patients' studies share an accession number (two RIS, a typo): before, the order
    contoured one of them, possibly the other patient's CT; now it fails with a code."""
    desk, holding = _desk(tmp_path)
    for case in phantoms[:2]:
        _store_received(desk, case, "ACC77")
    order = Order(
        accession_number="ACC77", clinical=CLINICAL, expires_at=utcnow() + timedelta(hours=1)
    )
    desk.orders.create(order)
    desk.run_once()
    failed = desk.orders.get(order.order_id)
    assert failed.status is OrderStatus.FAILED
    assert failed.error is not None and failed.error["code"] == "accession_ambiguous"
    assert "2 patients" in failed.error["detail"]
    assert holding.submitted == []


def test_a_second_order_for_the_same_study_and_side_is_refused(orders_gateway: str) -> None:
    """Before, both orders were accepted and both RTSTRUCTs went to the planning system."""
    body = {"study_instance_uid": "1.2.3.77", "clinical": CLINICAL}
    assert httpx.post(f"{orders_gateway}/orders", json=body, headers=AUTH).status_code == 201
    again = httpx.post(f"{orders_gateway}/orders", json=body, headers=AUTH)
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "duplicate_order"
    other_series = {**body, "series_instance_uid": "1.2.3.77.5"}
    assert (
        httpx.post(f"{orders_gateway}/orders", json=other_series, headers=AUTH).status_code == 201
    )
    right = [{**d, "side": "right"} for d in CLINICAL["diagnoses"]]
    other_side = {"study_instance_uid": "1.2.3.77", "clinical": {**CLINICAL, "diagnoses": right}}
    answer = httpx.post(f"{orders_gateway}/orders", json=other_side, headers=AUTH)
    assert answer.status_code == 201, answer.text
