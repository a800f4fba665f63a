"""Two patients never meet in one series: an instance whose study and series UIDs already hold
another patient's instances is kept aside (quarantine), refused, audited and counted, over
C-STORE and STOW-RS; and the order desk supersedes only within the same study.

On e766665 the received tree, the manifests and the review station's CT cache were keyed by
SeriesInstanceUID alone: another patient's instances under a reused UID were merged into the
series, and another study reusing the series UID could supersede a sent order (issue 23).
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomnet_helpers import AE_TITLE, running_listener
from factories import CtSpec, make_ct_slice
from fake_engine import FakeEngine
from live_server import serve_app
from pydicom.dataset import FileDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from service.app import create_app
from service.dicomnet.errors import InstanceConflictError
from service.dicomnet.storage import quarantined, same_instance_content, store_instance
from service.settings import Settings

TOKEN = "identity-test-token-0123456789"


def _slices(spec: CtSpec, patient: str, first_sop: int = 0) -> list[FileDataset]:
    out = []
    for k in range(spec.n_slices):
        ds = make_ct_slice(spec, k)
        ds.PatientID, ds.PatientName = patient, f"{patient}^TEST"
        if first_sop:  # other instances (new SOPInstanceUIDs) in the same series
            uid = generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        out.append(ds)
    return out


def test_c_store_of_another_patient_into_a_series_is_quarantined(tmp_path: Path) -> None:
    spec = CtSpec(n_slices=3)
    patient_a, patient_b = _slices(spec, "PAT-A"), _slices(spec, "PAT-B", first_sop=900)
    with running_listener(tmp_path / "received") as (listener, _):
        ae = AE(ae_title="TESTER")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
        statuses = [int(assoc.send_c_store(ds).Status) for ds in (*patient_a, *patient_b)]
        assoc.release()
    assert statuses == [0x0000] * 3 + [0xC000] * 3, [hex(s) for s in statuses]
    folder = tmp_path / "received" / spec.study_uid / spec.series_uid
    assert len(list(folder.glob("*.dcm"))) == 3, "only patient A's instances in the series"
    assert len(quarantined(tmp_path / "received")) == 3, "patient B's kept aside for an admin"


def test_stow_rs_quarantines_and_audits_the_conflict(tmp_path: Path) -> None:
    spec = CtSpec(n_slices=2)
    settings = Settings.from_env(
        api_tokens=[f"router:submitter:{TOKEN}", f"ops:admin:admin-{TOKEN}"],
        storage_dir=tmp_path,
        dicom_listener=False,
        storage_min_free_bytes=1,
    )
    boundary = "b0undary"

    def body(datasets: list[FileDataset]) -> bytes:
        parts = []
        for ds in datasets:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            parts.append(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + buffer.getvalue()
                + b"\r\n"
            )
        return b"".join(parts) + f"--{boundary}--\r\n".encode()

    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
    }
    app = create_app(settings, engine=FakeEngine())
    with serve_app(app) as url:
        first = httpx.post(
            f"{url}/dicomweb/studies",
            content=body(_slices(spec, "PAT-A")),
            headers=headers,
            timeout=60,
        )
        second = httpx.post(
            f"{url}/dicomweb/studies",
            content=body(_slices(spec, "PAT-B", first_sop=900)),
            headers=headers,
            timeout=60,
        )
        metrics = httpx.get(
            f"{url}/metrics", headers={"Authorization": f"Bearer admin-{TOKEN}"}, timeout=30
        ).text
        entries = app.state.llmctv_audit.read(kind="dicom.instance_quarantined")
    assert first.status_code == 200, first.text
    assert second.status_code == 409, second.text
    failed = second.json()["00081198"]["Value"]
    assert [item["00081197"]["Value"][0] for item in failed] == [0xC000, 0xC000]
    assert len(entries) == 2 and entries[0]["who"] == "DICOMweb:router"
    assert "PAT-B" not in str(entries), "the audit names no patient"
    assert "llmctv_dicom_instances_quarantined_total 2.0" in metrics


def _reencoded(ds: FileDataset) -> FileDataset:
    """The same instance in Implicit VR Little Endian: other bytes, same content."""
    copy = pydicom.dcmread(io.BytesIO(_encoded(ds)))
    copy.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buffer = io.BytesIO()
    copy.save_as(buffer, implicit_vr=True, little_endian=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def _encoded(ds: FileDataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_reused_sop_instance_uid_with_other_pixels_is_refused_over_c_store(
    tmp_path: Path,
) -> None:
    """Before, the second image silently replaced the first under the same UID (0x0000)."""
    spec = CtSpec(n_slices=2)
    first, second = _slices(spec, "PAT-A")
    reused = copy.deepcopy(first)
    reused.PixelData = bytes(reversed(reused.PixelData))  # another image, the same UIDs
    with running_listener(tmp_path / "received") as (listener, _):
        ae = AE(ae_title="TESTER")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
        statuses = [int(assoc.send_c_store(ds).Status) for ds in (first, second, reused)]
        assoc.release()
    assert statuses == [0x0000, 0x0000, 0xC000], [hex(s) for s in statuses]
    folder = tmp_path / "received" / spec.study_uid / spec.series_uid
    stored = folder / f"{first.SOPInstanceUID}.dcm"
    assert pydicom.dcmread(stored).PixelData == first.PixelData, "the first image is kept"
    assert len(quarantined(tmp_path / "received")) == 1


def test_the_same_instance_sent_again_in_another_encoding_is_accepted(tmp_path: Path) -> None:
    spec = CtSpec(n_slices=1)
    (ds,) = _slices(spec, "PAT-A")
    root = tmp_path / "received"
    args = (root, spec.study_uid, spec.series_uid, str(ds.SOPInstanceUID))
    store_instance(*args, _encoded(ds), patient_id="PAT-A")
    again = _reencoded(ds)
    assert _encoded(again) != _encoded(ds)
    assert same_instance_content(_encoded(ds), _encoded(again))
    store_instance(*args, _encoded(again), patient_id="PAT-A")  # no error
    changed = _reencoded(ds)
    changed.InstanceNumber = 99
    with pytest.raises(InstanceConflictError) as refused:
        store_instance(*args, _encoded(changed), patient_id="PAT-A")
    assert refused.value.code == "dicom_instance_conflict"
    assert quarantined(root) and not same_instance_content(_encoded(ds), _encoded(changed))


def test_stow_rs_refuses_a_second_part_reusing_a_sop_instance_uid(tmp_path: Path) -> None:
    """Two parts with one SOPInstanceUID and different pixels in one request: before, both
    were reported stored (the second replaced the first); now the second fails."""
    spec = CtSpec(n_slices=1)
    (first,) = _slices(spec, "PAT-A")
    reused = copy.deepcopy(first)
    reused.PixelData = bytes(reversed(reused.PixelData))
    settings = Settings.from_env(
        api_tokens=[f"router:submitter:{TOKEN}"],
        storage_dir=tmp_path,
        dicom_listener=False,
        storage_min_free_bytes=1,
    )
    boundary = "b0undary"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + _encoded(ds)
            + b"\r\n"
            for ds in (first, reused)
        )
        + f"--{boundary}--\r\n".encode()
    )
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
    }
    with serve_app(create_app(settings, engine=FakeEngine())) as url:
        answer = httpx.post(f"{url}/dicomweb/studies", content=body, headers=headers, timeout=60)
    assert answer.status_code == 202, answer.text
    stored = answer.json()["00081199"]["Value"]
    failed = answer.json()["00081198"]["Value"]
    assert len(stored) == 1 and len(failed) == 1
    assert failed[0]["00081197"]["Value"][0] == 0xC000
