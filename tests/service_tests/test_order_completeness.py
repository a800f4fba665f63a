"""Series completeness for orders (issue #15 item 4): late instances supersede partial runs."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from dicomnet_helpers import (
    AE_TITLE,
    LUNG1_CT,
    LUNG1_RTSTRUCT,
    Recorder,
    free_port,
    require_lung1,
    require_tool,
    running_listener,
)
from fake_engine import HoldingDispatcher
from pynetdicom import AE

from model.dicom.series import inspect_ct_series
from model.lab.phantoms.cohort import WrittenCase
from service.dicomnet.assembly import ReceivedSeries
from service.order_desk import OrderDesk, received_root, record_series
from service.orders import (
    INDEX_REFRESH_S,
    Order,
    OrderStatus,
    OrderStore,
    SendState,
    SendStatus,
)
from service.settings import Settings
from workers.jobs import FileJobStore, JobFiles, JobStatus, utcnow

CLINICAL = {
    "diagnoses": [{"side": "left", "surgery": "total_mastectomy", "t_stage": "2", "n_stage": "2"}]
}


def _desk(tmp_path: Path, **settings: object) -> tuple[OrderDesk, HoldingDispatcher]:
    config = Settings.from_env(storage_dir=tmp_path, dicom_listener=False, **settings)
    files = JobFiles(tmp_path)
    holding = HoldingDispatcher()
    desk = OrderDesk(config, OrderStore(tmp_path), FileJobStore(files), files, holding)
    return desk, holding


def _order(study: str, **fields: object) -> Order:
    return Order(
        study_instance_uid=study,
        clinical=CLINICAL,
        expires_at=utcnow() + timedelta(hours=1),
        **fields,  # type: ignore[arg-type]
    )


def _arrive(desk: OrderDesk, paths: list[Path], cycle: int) -> ReceivedSeries:
    """Store ``paths`` in the received tree and complete the series' ``cycle``."""
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    study, series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    folder = received_root(desk.settings.storage) / study / series_uid
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copy(path, folder / f"{path.stem}.dcm")
    series = ReceivedSeries(study, series_uid, None, "CT", "PACS", folder, len(paths), cycle)
    record_series(series)
    return series


def _storescu(port: int, files: list[Path]) -> None:
    storescu = require_tool("storescu")
    cmd = [storescu, "-aet", "STORESCU", "-aec", AE_TITLE, "127.0.0.1", str(port)]
    done = subprocess.run([*cmd, *map(str, files)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_split_push_of_lung1_ends_with_a_job_on_all_134_slices(tmp_path: Path) -> None:
    """The probe of issue #15: 60 slices, a pause longer than the series timeout, then 74."""
    require_lung1()
    slices = sorted(LUNG1_CT.glob("*.dcm"))
    assert len(slices) == 134
    study = str(pydicom.dcmread(slices[0], stop_before_pixels=True).StudyInstanceUID)
    desk, holding = _desk(tmp_path)
    order = _order(study)
    desk.orders.create(order)
    root = received_root(desk.settings.storage)
    recorder = Recorder()

    def on_complete(series: ReceivedSeries) -> None:
        desk.on_series_complete(series)
        recorder(series)

    with running_listener(root, timeout_s=0.5, on_complete=on_complete) as (listener, _):
        _storescu(listener.port, slices[:60])
        assert [s.cycle for s in recorder.wait_for(1)] == [1]
        desk.run_once()
        first = desk.orders.get(order.order_id)
        time.sleep(1.0)  # longer than the series timeout
        _storescu(listener.port, slices[60:])
        assert [s.cycle for s in recorder.wait_for(2)] == [1, 2]
        desk.run_once()
    final = desk.orders.get(order.order_id)
    assert final.status is OrderStatus.MATCHED
    assert final.job_id is not None and final.job_id != first.job_id
    used = inspect_ct_series(desk.files.input_dir(final.job_id)).shape[0]
    print(
        f"first run: {first.status.value} on {first.matched_instances} instances; "
        f"slices used by the final job: {used}"
    )
    assert used == 134
    assert final.matched_instances == 134
    job = desk.store.get(final.job_id)
    assert any("supersedes job" in w and "134" in w for w in job.warnings), job.warnings
    assert holding.submitted[-1] == final.job_id
    if first.job_id is not None:  # the partial run was started: it is marked superseded
        assert desk.store.get(first.job_id).superseded_by == final.job_id
        assert [run.instances for run in final.superseded] == [60]


def test_sent_partial_rtstruct_is_replaced_by_a_second_send(
    tmp_path: Path, phantoms: list[WrittenCase]
) -> None:
    require_lung1()
    port = free_port()
    desk, holding = _desk(tmp_path, dicom_destinations=[f"TPS=LLMCTV@127.0.0.1:{port}"])
    case = phantoms[0]
    files = sorted(case.ct_files)
    series = _arrive(desk, files[:-4], cycle=1)
    order = _order(
        series.study_instance_uid, destination="TPS", send=SendState(status=SendStatus.PENDING)
    )
    desk.orders.create(order)
    desk.run_once()
    old_job = desk.orders.get(order.order_id).job_id
    assert old_job is not None
    old_uid = "1.2.826.0.1.3680043.8.498.1"
    desk.store.update(old_job, status=JobStatus.SUCCEEDED, rtstruct_sop_instance_uid=old_uid)
    sent = SendState(status=SendStatus.SENT, attempts=1, sent_at=utcnow())
    desk.orders.update(order.order_id, send=sent)

    _arrive(desk, files, cycle=2)  # the last 4 slices arrive late
    desk.run_once()
    again = desk.orders.get(order.order_id)
    new_job = again.job_id
    assert new_job is not None and new_job != old_job
    assert again.send.status is SendStatus.PENDING
    assert again.send.replaces_rtstruct == old_uid
    assert again.superseded[0].job_id == old_job and again.superseded[0].sent_at is not None
    warnings = desk.store.get(new_job).warnings
    assert any(old_uid in w and "replaces it" in w for w in warnings), warnings
    assert holding.submitted == [old_job, new_job]

    rtstruct = pydicom.dcmread(LUNG1_RTSTRUCT)
    rtstruct.SOPInstanceUID = rtstruct.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(
        "1.2.826.0.1.3680043.8.498.2"
    )
    rtstruct.save_as(desk.files.rtstruct(new_job))
    desk.store.update(new_job, status=JobStatus.SUCCEEDED)
    with running_listener(tmp_path / "tps", port=port, allowed=("LLMCTV",)) as (_, recorder):
        desk.run_once()
        (received,) = recorder.wait_for(1)
        desk.stop()
    assert received.modality == "RTSTRUCT"
    assert desk.orders.get(order.order_id).send.status is SendStatus.SENT


def test_stray_slice_before_the_order_does_not_fail_it(
    tmp_path: Path, phantoms: list[WrittenCase]
) -> None:
    desk, _ = _desk(tmp_path)
    files = sorted(phantoms[0].ct_files)
    series = _arrive(desk, files[:1], cycle=1)  # a stray slice, received before the order
    time.sleep(0.01)
    order = _order(series.study_instance_uid)
    desk.orders.create(order)
    desk.run_once()
    assert desk.orders.get(order.order_id).status is OrderStatus.WAITING
    _arrive(desk, files, cycle=2)
    desk.run_once()
    matched = desk.orders.get(order.order_id)
    assert matched.status is OrderStatus.MATCHED
    assert matched.matched_instances == len(files)
    assert len(list(desk.files.input_dir(matched.job_id or "").glob("*.dcm"))) == len(files)


def test_series_still_receiving_is_not_matched(tmp_path: Path, phantoms: list[WrittenCase]) -> None:
    desk, holding = _desk(tmp_path)
    files = sorted(phantoms[0].ct_files)
    series = _arrive(desk, files[:-3], cycle=1)
    for path in files[-3:]:  # a second cycle is under way: more files than the manifest says
        shutil.copy(path, series.folder / f"{path.stem}.dcm")
    order = _order(series.study_instance_uid)
    desk.orders.create(order)
    desk.run_once()
    assert desk.orders.get(order.order_id).status is OrderStatus.WAITING
    assert holding.submitted == []


def test_order_failed_on_a_partial_series_is_matched_again(
    tmp_path: Path, phantoms: list[WrittenCase]
) -> None:
    desk, _ = _desk(tmp_path)
    files = sorted(phantoms[0].ct_files)
    order = _order(str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID))
    desk.orders.create(order)
    _arrive(desk, files[:3] + files[6:], cycle=1)  # a gap: three slices missing
    desk.run_once()
    failed = desk.orders.get(order.order_id)
    assert failed.status is OrderStatus.FAILED
    assert failed.error is not None and failed.error["code"] == "missing_slices"
    _arrive(desk, files, cycle=2)
    desk.run_once()
    again = desk.orders.get(order.order_id)
    assert again.status is OrderStatus.MATCHED, again.error
    assert again.matched_instances == len(files)


def test_resend_of_the_same_series_does_not_supersede(
    tmp_path: Path, phantoms: list[WrittenCase]
) -> None:
    desk, holding = _desk(tmp_path)
    files = sorted(phantoms[0].ct_files)
    series = _arrive(desk, files, cycle=1)
    order = _order(series.study_instance_uid)
    desk.orders.create(order)
    desk.run_once()
    _arrive(desk, files, cycle=2)  # the PACS sends the same instances again
    desk.run_once()
    assert len(holding.submitted) == 1
    assert desk.orders.get(order.order_id).superseded == []


def test_order_index_sees_other_writers_and_skips_closed_orders(tmp_path: Path) -> None:
    now = [0.0]
    store = OrderStore(tmp_path, clock=lambda: now[0])
    waiting = _order("1.2.3")
    store.create(waiting)
    closed = _order("1.2.4", status=OrderStatus.EXPIRED)
    store.create(closed)
    assert [o.order_id for o in store.open_orders()] == [waiting.order_id]
    other = OrderStore(tmp_path)  # another process
    late = _order("1.2.5")
    other.create(late)
    other.update(waiting.order_id, status=OrderStatus.FAILED)
    now[0] += INDEX_REFRESH_S  # even if the folder's coarse mtime did not move
    assert [o.order_id for o in store.open_orders()] == [late.order_id]


@pytest.mark.parametrize("count", [1500])
def test_idle_rounds_with_many_waiting_orders_are_cheap(tmp_path: Path, count: int) -> None:
    desk, _ = _desk(tmp_path)
    for index in range(count):  # written as another process would (no fsync: fast)
        order = _order(f"1.2.3.{index}")
        (desk.orders.folder / f"{order.order_id}.json").write_text(order.model_dump_json())
    desk.run_once()  # the first round tries every order once
    started = time.process_time()
    rounds = 20
    for _ in range(rounds):
        desk.run_once()
    per_round = (time.process_time() - started) / rounds
    # One round a second: CPU share = CPU seconds per round. Issue #15 asks for < 2 %.
    assert per_round < 0.02, f"{per_round * 1000:.1f} ms of CPU per round"


def test_ct_object_with_modality_mr_fails_its_waiting_order_at_once(tmp_path: Path) -> None:
    require_lung1()
    ds = pydicom.dcmread(sorted(LUNG1_CT.glob("*.dcm"))[0])
    ds.Modality = "MR"
    desk, holding = _desk(tmp_path)
    order = _order(str(ds.StudyInstanceUID))
    desk.orders.create(order)
    with running_listener(received_root(desk.settings.storage)) as (listener, _):
        ae = AE(ae_title="TESTER")
        ae.add_requested_context(ds.SOPClassUID, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assoc.release()
    assert status.Status == 0xA900
    desk.run_once()
    failed = desk.orders.get(order.order_id)
    assert failed.status is OrderStatus.FAILED
    assert failed.error is not None and failed.error["code"] == "dicom_modality_mismatch"
    assert "Modality 'MR'" in failed.error["detail"]
    assert holding.submitted == []


def test_another_study_reusing_the_series_uid_never_supersedes(
    tmp_path: Path, phantoms: list[WrittenCase]
) -> None:
    """Patient B's study reuses the SeriesInstanceUID of patient A's sent order (issue 23)."""
    desk, holding = _desk(tmp_path)
    series = _arrive(desk, sorted(phantoms[0].ct_files), cycle=1)
    order = _order(series.study_instance_uid, send=SendState(status=SendStatus.PENDING))
    desk.orders.create(order)
    desk.run_once()
    matched = desk.orders.get(order.order_id)
    assert matched.job_id is not None
    desk.store.update(matched.job_id, status=JobStatus.SUCCEEDED)
    desk.orders.update(order.order_id, send=SendState(status=SendStatus.SENT, attempts=1))
    other = tmp_path / "patient-b"
    other.mkdir()
    reused = []
    for path in sorted(phantoms[1].ct_files):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series.series_instance_uid  # B's own study, A's series UID
        ds.save_as(other / path.name, enforce_file_format=True)
        reused.append(other / path.name)
    _arrive(desk, reused, cycle=2)
    desk.run_once()
    after = desk.orders.get(order.order_id)
    assert after.job_id == matched.job_id and after.superseded == [], "A's order untouched"
    assert after.send.status is SendStatus.SENT
    assert holding.submitted == [matched.job_id], "no job on patient B's CT"


def test_rtstruct_stored_inside_the_ct_series_never_blocks_its_order(
    tmp_path: Path, phantoms: list[WrittenCase]
) -> None:
    """An RTSTRUCT pushed under the CT's SeriesInstanceUID after the series completed: the
    order still matches (it waited until expiry before), and the reader ignores the object
    with a warning instead of refusing the series as not CT."""
    desk, holding = _desk(tmp_path)
    files = sorted(phantoms[0].ct_files)
    series = _arrive(desk, files, cycle=1)
    rtstruct = pydicom.dcmread(phantoms[0].rtstruct)
    rtstruct.SeriesInstanceUID = series.series_instance_uid
    rtstruct.StudyInstanceUID = series.study_instance_uid
    rtstruct.save_as(series.folder / f"{rtstruct.SOPInstanceUID}.dcm")
    record_series(
        ReceivedSeries(
            series.study_instance_uid,
            series.series_instance_uid,
            None,
            "RTSTRUCT",
            "PACS",
            series.folder,
            1,
            2,
        )
    )
    order = _order(series.study_instance_uid)
    desk.orders.create(order)
    desk.run_once()
    matched = desk.orders.get(order.order_id)
    assert matched.status is OrderStatus.MATCHED, matched.error
    assert holding.submitted == [matched.job_id]
    summary = inspect_ct_series(desk.files.input_dir(matched.job_id or ""))
    assert summary.shape[0] == len(files)
    assert any("non-image object(s) (RTSTRUCT)" in w for w in summary.warnings)
