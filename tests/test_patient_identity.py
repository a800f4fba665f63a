"""Two patients never meet in one series: an instance whose study and series UIDs already hold
another patient's instances is kept aside (quarantine), refused, audited and counted, over
C-STORE and STOW-RS; and the order desk supersedes only within the same study.

On e766665 the received tree, the manifests and the review station's CT cache were keyed by
SeriesInstanceUID alone: another patient's instances under a reused UID were merged into the
series, and another study reusing the series UID could supersede a sent order (issue 23).
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
from dicomnet_helpers import AE_TITLE, running_listener
from factories import CtSpec, make_ct_slice
from fake_engine import FakeEngine
from live_server import serve_app
from pydicom.dataset import FileDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from service.app import create_app
from service.dicomnet.storage import quarantined
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
