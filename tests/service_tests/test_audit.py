"""The audit trail: one job's life, orders, DICOM associations; no patient identifier in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fake_engine import FakeEngine
from gateway_client import TOKEN, submit, wait_finished
from live_server import free_port, serve_app

from model.lab.phantoms.cohort import WrittenCase
from service.app import create_app
from service.settings import Settings
from workers.audit import AuditKind, AuditLog, hash_identifier

ADMIN, SUBMITTER = "audit-admin-0123456789", "audit-submitter-012345"
ECHOSCU = shutil.which("echoscu")


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@dataclass
class Deployment:
    url: str
    storage: Path
    dicom_port: int


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    storage = tmp_path_factory.mktemp("storage")
    port = free_port()
    settings = Settings.from_env(
        api_tokens=[f"ada:admin:{ADMIN}", f"pacs-router:submitter:{SUBMITTER}", TOKEN],
        storage_dir=storage,
        dicom_listener=True,
        dicom_host="127.0.0.1",
        dicom_port=port,
        dicom_allowed_aets=["GOODSCU"],
        storage_min_free_bytes=1,
    )
    with serve_app(create_app(settings, engine=FakeEngine())) as url:
        yield Deployment(url, storage, port)


def entries(url: str, **query: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/audit", params=query, headers=bearer(ADMIN))
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["entries"]
    return found


def raw_audit_text(storage: Path) -> str:
    return "".join(p.read_text() for p in sorted((storage / "audit").glob("*.jsonl")))


def test_one_jobs_life_is_audited_without_patient_identifiers(
    deployment: Deployment, phantoms: list[WrittenCase]
) -> None:
    case = phantoms[0]
    answer = submit(
        deployment.url,
        list(case.ct_files),
        case.clinical.model_dump_json(),
        headers=bearer(SUBMITTER),
    )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    assert wait_finished(deployment.url, job_id)["status"] == "succeeded"

    life = entries(deployment.url, job_id=job_id)
    assert [e["kind"] for e in life] == [
        AuditKind.JOB_SUBMITTED,
        AuditKind.JOB_STARTED,
        AuditKind.JOB_FINISHED,
    ]
    assert life[0]["who"] == "pacs-router"
    assert life[1]["who"] == life[2]["who"] == "embedded-worker"
    assert all(datetime.fromisoformat(e["at"]).tzinfo is not None for e in life)

    ds = pydicom.dcmread(case.ct_files[0], stop_before_pixels=True)
    text = raw_audit_text(deployment.storage)
    for identifier in (str(ds.PatientName), str(ds.PatientID), ds.SeriesInstanceUID):
        assert identifier and identifier not in text
    assert life[0]["series_instance_uid"] == hash_identifier(ds.SeriesInstanceUID)


def test_audit_filters_by_kind_and_time(deployment: Deployment) -> None:
    loaded = entries(deployment.url, kind=AuditKind.SETTINGS_LOADED)
    assert len(loaded) == 1 and loaded[0]["who"] == "system"
    assert "api_tokens" not in loaded[0]["settings"]
    assert ADMIN not in raw_audit_text(deployment.storage)
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert entries(deployment.url, since=later) == []


def test_orders_are_audited_with_hashed_study(deployment: Deployment) -> None:
    study = "1.2.826.0.1.3680043.8.498.4711"
    clinical = {
        "diagnoses": [
            {"side": "left", "surgery": "breast_conserving", "t_stage": "1", "n_stage": "0"}
        ]
    }
    answer = httpx.post(
        f"{deployment.url}/orders",
        json={"study_instance_uid": study, "clinical": clinical},
        headers=bearer(SUBMITTER),
    )
    assert answer.status_code == 201, answer.text
    order_id = answer.json()["order_id"]
    created = [e for e in entries(deployment.url, kind=AuditKind.ORDER_CREATED)]
    mine = [e for e in created if e["order_id"] == order_id]
    assert len(mine) == 1 and mine[0]["who"] == "pacs-router"
    assert mine[0]["study_instance_uid"] == hash_identifier(study)
    assert study not in raw_audit_text(deployment.storage)


@pytest.mark.skipif(ECHOSCU is None, reason="dcmtk echoscu is not installed")
def test_dicom_associations_are_audited_by_calling_ae_and_address(
    deployment: Deployment,
) -> None:
    for calling in ("GOODSCU", "BADSCU"):
        command = [str(ECHOSCU), "-aet", calling, "-aec", "LLMCTV"]
        subprocess.run([*command, "127.0.0.1", str(deployment.dicom_port)], timeout=30, check=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        accepted = entries(deployment.url, kind=AuditKind.DICOM_ACCEPTED)
        rejected = entries(deployment.url, kind=AuditKind.DICOM_REJECTED)
        if accepted and rejected:
            break
        time.sleep(0.1)
    assert accepted[-1]["who"] == "GOODSCU@127.0.0.1"
    assert rejected[-1]["who"] == "BADSCU@127.0.0.1"
    assert rejected[-1]["reason"] == "calling_ae_not_allowed"
    metrics = httpx.get(f"{deployment.url}/metrics", headers=bearer(ADMIN)).text
    assert 'llmctv_dicom_associations_total{outcome="accepted",reason=""} 1.0' in metrics
    assert (
        'llmctv_dicom_associations_total{outcome="rejected",reason="calling_ae_not_allowed"} 1.0'
        in metrics
    )


def test_log_rotates_and_old_files_expire(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", max_bytes=400, retention_days=30)
    for n in range(20):
        assert log.record(AuditKind.JOB_SUBMITTED, "ada", job_id=f"{n:032x}") is not None
    rotated = sorted((tmp_path / "audit").glob("audit-*.jsonl"))
    assert len(rotated) >= 3
    assert [e["job_id"] for e in log.read()] == [f"{n:032x}" for n in range(20)]
    old = (datetime.now(UTC) - timedelta(days=31)).timestamp()
    os.utime(rotated[0], (old, old))
    assert log.purge() == 1
    assert not rotated[0].exists() and rotated[1].exists()


def test_patient_fields_are_dropped_and_uids_hashed(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, max_bytes=10**6, retention_days=1)
    entry = log.record(
        AuditKind.ORDER_MATCHED,
        "order-desk",
        patient_name="Doe^Jane",
        PatientID="PID-4711",
        study_instance_uid="1.2.3",
        accession_number="ACC-9",
    )
    assert entry is not None
    assert "patient_name" not in entry and "PatientID" not in entry
    assert entry["study_instance_uid"] == hash_identifier("1.2.3")
    assert entry["accession_number"] == hash_identifier("ACC-9")


def test_order_send_outcomes_are_audited_and_counted(tmp_path: Path) -> None:
    from service.orders import AuditedOrderStore, Order, OrderStatus, SendState, SendStatus
    from workers.counters import LocalMetrics, series_key

    log = AuditLog(tmp_path / "audit", max_bytes=10**6, retention_days=1)
    metrics = LocalMetrics()
    orders = AuditedOrderStore(tmp_path, log, metrics)
    order = Order(
        study_instance_uid="1.2.3.4",
        destination="TPS",
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        send=SendState(status=SendStatus.PENDING),
    )
    orders.create(order)
    orders.update(order.order_id, status=OrderStatus.MATCHED, job_id="ab" * 16)
    orders.update(order.order_id, send=SendState(status=SendStatus.FAILED, attempts=3))
    orders.update(order.order_id, send=SendState(status=SendStatus.SENT, attempts=1))
    kinds = [e["kind"] for e in log.read()]
    assert kinds == [
        AuditKind.ORDER_CREATED,
        AuditKind.ORDER_MATCHED,
        AuditKind.ORDER_SEND_FAILED,
        AuditKind.ORDER_SENT,
    ]
    counts = metrics.snapshot()
    assert counts[series_key("rtstruct_sends", {"outcome": "failed"})] == 1
    assert counts[series_key("rtstruct_sends", {"outcome": "sent"})] == 1
